"""What every model type provides to the training loop (``smallgen/trainer.py``).

The loop owns epochs, seeds, accumulation bookkeeping, lr-schedule steps, logging, finite checks,
checkpoints, the validation and sample-grid schedules, export and push. An objective owns its
networks, optimizers, lr schedules and extra checkpoint state, and answers these calls:

* ``check_arguments()``: raise ConfigError for settings this model type cannot take (before
  anything is written);
* ``setup(accelerator, max_train_steps)``: optimizers, lr schedules, ``accelerator.prepare``;
* ``train_step(micro_batches)``: one optimizer step over ``MicroBatch``es; returns a dict of device
  tensors to log (no host sync);
* ``validation_losses(images, generator, labels)``: batch-mean losses of clean images, keyed by
  ``validation_names`` (eval mode is set by the loop, which splits batches over processes and reduces);
* ``sample_grids(num_images, seed)``: {name: uint8 images, or (images, images per row)}, image i
  depending only on (seed, i);
* ``export(output_dir)``: write the pipeline folder; returns a ``ModelCardText``.
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
    name = ""  # the --model_type
    needs_labels = False  # constructed with the training labels (smallgen.data.Labels) when True
    validation_names: tuple[str, ...] = ()  # the keys validation_losses returns (none: no validation)

    def __init__(self, data_args, model_args, train_args):
        self.data_args, self.model_args, self.train_args = data_args, model_args, train_args
        self.accelerator = None
        self.networks: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.lr_schedulers: dict = {}

    # ------------------------------------------------------------------ built before any file is touched

    def check_arguments(self) -> None:
        """ConfigError for settings this model type cannot take."""

    def build_networks(self) -> dict[str, torch.nn.Module]:
        raise NotImplementedError

    def describe(self) -> str:
        return ", ".join(f"{name} {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M"
                         for name, net in self.networks.items())

    # ------------------------------------------------------------------ training

    def setup(self, accelerator, max_train_steps: int) -> None:
        """One Adam(W) per network, prepared by the accelerator, and its lr schedule."""
        self.accelerator = accelerator
        for name, network in self.networks.items():
            self.optimizers[name] = self.make_optimizer(network)
        names = list(self.networks)
        prepared = accelerator.prepare(*self.networks.values(), *self.optimizers.values())
        self.networks = dict(zip(names, prepared[:len(names)]))
        self.optimizers = dict(zip(names, prepared[len(names):]))
        self.make_lr_schedules(max_train_steps)

    def make_lr_schedules(self, max_train_steps: int) -> None:
        """One lr schedule per optimizer over ``max_train_steps`` (rebuilt once a time budget fixes that)."""
        from diffusers.optimization import get_scheduler

        args = self.train_args
        for name, optimizer in self.optimizers.items():
            raw = getattr(optimizer, "optimizer", optimizer)  # the optimizer accelerate wraps, as before prepare
            self.lr_schedulers[name] = get_scheduler(args.lr_scheduler, optimizer=raw,
                                                     num_warmup_steps=args.lr_warmup_steps,
                                                     num_training_steps=max_train_steps)

    def make_optimizer(self, network) -> torch.optim.Optimizer:
        args = self.train_args
        return torch.optim.Adam(network.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                eps=args.adam_epsilon, weight_decay=args.adam_weight_decay)

    def checkpoint_objects(self) -> dict:
        """Extra stateful objects saved in checkpoints besides networks, optimizers and lr schedules."""
        return {}

    def train_mode(self, training: bool) -> None:
        for network in self.networks.values():
            network.train(training)

    def update(self, name: str, loss: torch.Tensor) -> None:
        """Backward, clip, step and clear one network's optimizer."""
        network, optimizer = self.networks[name], self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        if self.train_args.max_grad_norm is not None:
            self.accelerator.clip_grad_norm_(network.parameters(), self.train_args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

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

    @torch.no_grad()
    def sample_grids(self, num_images: int, seed: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def export(self, output_dir: str) -> ModelCardText:
        raise NotImplementedError
