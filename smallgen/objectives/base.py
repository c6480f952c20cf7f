"""What every model type provides to the training loop (``smallgen/trainer.py``), the command line
(``smallgen/config.py``) and ``evaluate_fid.py`` (``smallgen/evaluation.py``).

The loop owns epochs, seeds, accumulation bookkeeping, lr-schedule steps, logging, finite checks,
checkpoints, the validation and sample-grid schedules, export and push. An objective owns its
flags, networks, loss, optimizers and extra checkpoint state, its pipeline and its samplers:

* class attributes: ``name`` (its registry key), ``arguments`` (its argument classes: the flags it
  reads, each with ``check(arguments, objective_class)`` where flags depend on each other),
  ``needs_labels``, ``validation_names``,
  ``pipeline_classes`` (the pipeline class names it exports, so evaluate_fid.py knows its
  samplers), ``samplers`` ({evaluate_fid.py --scheduler name: ``smallgen.sampling.Sampler``}) and
  ``evaluation_arguments`` (evaluate_fid.py flags of its pipelines alone, which
  ``evaluation_settings(pipeline, args)`` turns into the pipeline call's keywords);
* ``check_arguments(data_args, model_args, train_args)``: raise ConfigError for data or training
  settings this model type cannot take (before anything is loaded or written);
* ``build_networks()``: {name: network}, called once by ``__init__``;
* ``setup(accelerator, max_train_steps)``: optimizers, lr schedules, ``accelerator.prepare``;
* ``train_step(micro_batches)``: one optimizer step over ``MicroBatch``es; returns a dict of device
  tensors to log (no host sync);
* ``validation_losses(images, generator, labels)``: batch-mean losses of clean images, keyed by
  ``validation_names`` (eval mode is set by the loop, which splits batches over processes and reduces);
* ``make_pipeline(device)``: the pipeline it exports, holding the weights to sample (EMA if kept);
* ``sample_grids(num_images, seed)``: {name: uint8 images, or (images, images per row)}, image i
  depending only on (seed, i), drawn through ``make_pipeline``'s ``__call__`` (``smallgen.sampling``);
  ``grid_seconds(num_images)`` what one round of them costs (the trainer plans and announces it);
* ``model_card()``: the ``ModelCardText`` of the export; ``export(output_dir)`` saves the pipeline
  (with its code, ``pipelines/portable_pipeline.py``) and returns it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MicroBatch:
    """Images in [-1, 1] on the device, their labels (None unless the objective needs them) and the
    generator every random draw of this micro-batch comes from (seeded by seed, step, micro, process)."""

    images: torch.Tensor
    generator: torch.Generator
    labels: torch.Tensor | None = None


@dataclass
class ModelCardText:
    description: str
    tags: list[str]
    arguments: dict = field(default_factory=dict)
    trust_remote_code: bool = False


class Objective:
    name = ""  # the registry key (--model_type, "+class" for the --class_conditional variant)
    arguments: tuple[type, ...] = ()  # the argument classes whose flags this model type reads
    needs_labels = False  # constructed with the training labels (smallgen.data.Labels) when True
    validation_names: tuple[str, ...] = ()  # the keys validation_losses returns (none: no validation)
    pipeline_classes: tuple[str, ...] = ()  # the pipeline classes it exports (and evaluate_fid.py samples)
    samplers: dict = {}  # evaluate_fid.py --scheduler: smallgen.sampling.Sampler
    evaluation_arguments: tuple[type, ...] = ()  # evaluate_fid.py flags that only this model type's pipelines take
    fast_sampler: tuple[str, int] | None = None  # (name in samplers, steps) scored while training; None: one call
    tracks_posthoc_ema = False  # --posthoc_ema: trained_parameters() averaged after each step (the UNet types)
    exported_networks: tuple[str, ...] = ()  # pipeline components whose parameters, in turn, are trained_parameters()'s

    def __init__(self, data_args, model_args, train_args, labels=None):
        self.data_args, self.model_args, self.train_args = data_args, model_args, train_args
        self.accelerator = None
        self.networks: dict[str, torch.nn.Module] = self.build_networks()
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.lr_schedulers: dict = {}
        self.posthoc = None  # --posthoc_ema: smallgen.posthoc_ema.PowerFunctionEMA of trained_parameters()

    @classmethod
    def check_arguments(cls, data_args, model_args, train_args) -> None:
        """ConfigError for data or training settings this model type cannot take."""

    def build_networks(self) -> dict[str, torch.nn.Module]:
        raise NotImplementedError

    def describe(self) -> str:
        return ", ".join(f"{name} {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M"
                         for name, net in self.networks.items())

    # ------------------------------------------------------------------ training

    def setup(self, accelerator, max_train_steps: int) -> None:
        """The optimizers, prepared by the accelerator with the networks, and their lr schedules."""
        self.accelerator = accelerator
        self.optimizers = self.make_optimizers()
        names, optimizer_names = list(self.networks), list(self.optimizers)
        prepared = accelerator.prepare(*self.networks.values(), *self.optimizers.values())
        self.networks = dict(zip(names, prepared[:len(names)]))
        self.optimizers = dict(zip(optimizer_names, prepared[len(names):]))
        self.make_schedules(max_train_steps)

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One Adam per network, named like it."""
        args = self.train_args
        return {name: torch.optim.Adam(network.parameters(), lr=args.learning_rate,
                                       betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                                       weight_decay=args.adam_weight_decay)
                for name, network in self.networks.items()}

    def make_schedules(self, max_train_steps: int) -> None:
        """Everything scheduled over the run's steps: one lr schedule per optimizer (and a model type's own,
        e.g. consistency stages); made again once a time budget fixes ``max_train_steps``."""
        from diffusers.optimization import get_scheduler

        args = self.train_args
        for name, optimizer in self.optimizers.items():
            raw = getattr(optimizer, "optimizer", optimizer)  # the optimizer accelerate wraps, as before prepare
            self.lr_schedulers[name] = get_scheduler(args.lr_scheduler, optimizer=raw,
                                                     num_warmup_steps=args.lr_warmup_steps,
                                                     num_training_steps=max_train_steps)

    def checkpoint_objects(self) -> dict:
        """Extra stateful objects saved in checkpoints besides networks, optimizers and lr schedules."""
        return {}

    def train_mode(self, training: bool) -> None:
        for network in self.networks.values():
            network.train(training)

    def train_step(self, micro_batches) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def trained_parameters(self) -> list:
        """Every weight the optimizers step."""
        return [p for net in self.networks.values() for p in net.parameters()]

    def weights_finite(self) -> bool:
        """Whether every trained weight is finite (one host sync; called before saves)."""
        flags = [torch.isfinite(p).all() for p in self.trained_parameters()]
        return bool(torch.stack(flags).all().item())

    # ------------------------------------------------------------------ evaluation and export

    @torch.no_grad()
    def validation_losses(self, images: torch.Tensor, generator: torch.Generator,
                          labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {}

    def make_pipeline(self, device="cpu"):
        raise NotImplementedError

    @torch.no_grad()
    def sample_grids(self, num_images: int, seed: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def grid_seconds(self, num_images: int) -> float:
        """Seconds one round of sample grids takes: drawn once and timed (quick for one network call an
        image; the UNet types estimate theirs)."""
        import time

        start = time.perf_counter()
        self.sample_grids(num_images, seed=0)
        return time.perf_counter() - start

    @torch.no_grad()
    def evaluation_images(self, count: int, seed: int, first_index: int) -> torch.Tensor:
        """Images ``first_index`` ... of ``seed`` as uint8, drawn for the scores while training: the exported
        pipeline with ``fast_sampler`` and ``evaluation_options()``; the networks' modes restored after."""
        from smallgen.sampling import draw_images, with_sampler

        modes = [(network, network.training) for network in self.networks.values()]
        try:
            pipeline, options = self.make_pipeline(self.accelerator.device), self.evaluation_options()
            if self.fast_sampler is not None:
                name, options["num_inference_steps"] = self.fast_sampler
                pipeline = with_sampler(pipeline, self.samplers[name])
            pipeline.set_progress_bar_config(disable=True)
            return draw_images(pipeline, count, seed, batch_size=self.train_args.eval_batch_size,
                               first_index=first_index, **options)
        finally:
            for network, training in modes:
                network.train(training)

    def evaluation_options(self) -> dict:
        """The pipeline call's keywords for the scores while training (a conditional model's labels)."""
        return {}

    @classmethod
    def evaluation_flags(cls, training_arguments: dict) -> dict:
        """evaluate_fid.py's flags that score an export as a run of these training arguments scores itself."""
        if cls.fast_sampler is None:
            return {}
        name, steps = cls.fast_sampler
        return {"scheduler": name, "num_inference_steps": [steps]}

    @classmethod
    def evaluation_settings(cls, pipeline, args) -> list[dict]:
        """The keywords evaluate_fid.py passes this model type's pipeline, one dict per setting it sweeps
        (each scored on its own), from ``args``' ``evaluation_arguments`` flags."""
        return [{}]

    def model_card(self) -> ModelCardText:
        raise NotImplementedError

    def export(self, output_dir: str) -> ModelCardText:
        """The pipeline folder (safetensors, with the code of our own classes) and its model card text."""
        self.make_pipeline("cpu").save_pretrained(output_dir, safe_serialization=True)
        return self.model_card()
