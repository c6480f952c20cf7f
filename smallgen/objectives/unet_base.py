"""What the UNet model types (ddpm, edm, flow, ...) share: one diffusers ``UNet2DModel`` (from
``--model_config_name_or_path``), AdamW over its weights, gradient accumulation, an optional EMA
(diffusers' EMAModel), validation with the training loss, and sample grids drawn with the model
type's samplers. A subclass says what its loss is (``make_loss``, the math in ``models/``), how
the loss sees the network (``denoiser``), its pipeline (``make_pipeline``) and which samplers draw
its grids.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from smallgen.arguments import flag
from smallgen.errors import ConfigError
from smallgen.objectives.base import MicroBatch, Objective


@dataclass
class UNetArguments:
    """The flags of every UNet model type."""

    model_config_name_or_path: str | None = flag(
        None, "UNet config: a JSON file, a name in configs/models/, or a pipeline folder. "
              "Unset: unet-sprites16 at <= 16 px, else unet-small-cifar10.", group="model")
    grid_num_inference_steps: int = flag(
        50, "Steps of the sample grids' fast samplers (ddpm: DDIM; edm and flow: each of their samplers).",
        group="sampling (grids)", at_least=1, old_names=("ddim_num_inference_steps",))


class UNetObjective(Objective):
    tracks_posthoc_ema = True
    exported_networks = ("unet",)
    arguments = (UNetArguments,)
    validation_names = ("val_loss",)

    def __init__(self, data_args, model_args, train_args, labels=None):
        super().__init__(data_args, model_args, train_args, labels)
        self.unet = self.networks["unet"]
        self.loss = self.make_loss()
        self.ema = None
        self.compiled = None

    @classmethod
    def check_arguments(cls, data_args, model_args, train_args) -> None:
        """The UNet config must exist and fit the resolution (read, not built: before any data loads)."""
        from models.unet import load_unet_config

        try:
            load_unet_config(model_args.model_config_name_or_path, data_args.resolution)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def build_networks(self) -> dict[str, torch.nn.Module]:
        try:
            unet = self.make_unet()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.train_args.channels_last:
            unet = unet.to(memory_format=torch.channels_last)
        return {"unet": unet}

    def memory_format(self, images: torch.Tensor) -> torch.Tensor:
        """The network's input in --channels_last layout when asked (the UNet's weights are already)."""
        return images.contiguous(memory_format=torch.channels_last) if self.train_args.channels_last else images

    def make_unet(self, **condition):
        from models.unet import create_unet

        return create_unet(self.model_args.model_config_name_or_path, self.data_args.resolution, **condition)

    def make_loss(self):
        """The loss object: ``loss(denoiser, images, generator) -> per-image loss``."""
        raise NotImplementedError

    def denoiser(self, network, labels: torch.Tensor | None = None):
        """The network as the loss sees it (e.g. ``(x_t, t) -> prediction``)."""
        raise NotImplementedError

    def training_labels(self, batch: MicroBatch) -> torch.Tensor | None:
        """What the network is conditioned on in a training step (nothing: unconditional)."""
        return None

    def describe(self) -> str:
        return f"UNet2DModel, {sum(p.numel() for p in self.unet.parameters()) / 1e6:.2f}M parameters"

    # ------------------------------------------------------------------ training

    def make_optimizers(self):
        args = self.train_args
        return {"unet": torch.optim.AdamW(self.trained_parameters(), lr=args.learning_rate,
                                          betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.adam_weight_decay,
                                          eps=args.adam_epsilon, fused=self.accelerator.device.type == "cuda")}

    def setup(self, accelerator, max_train_steps: int) -> None:
        from diffusers import UNet2DModel
        from diffusers.training_utils import EMAModel

        args = self.train_args
        if args.use_ema:
            self.ema = EMAModel(self.trained_parameters(), decay=args.ema_max_decay, use_ema_warmup=args.ema_warmup,
                                inv_gamma=args.ema_inv_gamma, power=args.ema_power, foreach=True,
                                model_cls=UNet2DModel, model_config=self.unet.config)
            self.ema.to(accelerator.device)
        if args.posthoc_ema:
            from smallgen.posthoc_ema import PowerFunctionEMA

            self.posthoc = PowerFunctionEMA(self.trained_parameters(), sigma_rels=args.posthoc_ema_sigma_rels)
        super().setup(accelerator, max_train_steps)
        self.unet = self.networks["unet"]
        self.loss.to(accelerator.device)
        self.compiled = torch.compile(self.unet) if args.torch_compile else self.unet

    def trained_parameters(self) -> list:
        """What the optimizer steps, clipping bounds and the EMA averages (the UNet's weights first)."""
        return list(self.unet.parameters())

    def checkpoint_objects(self) -> dict:
        return {**({} if self.ema is None else {"ema": self.ema}),
                **({} if self.posthoc is None else {"posthoc_ema": self.posthoc})}

    def train_step(self, micro_batches) -> dict[str, torch.Tensor]:
        accelerator, args = self.accelerator, self.train_args
        optimizer = self.optimizers["unet"]
        total = None
        for index, batch in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            with accelerator.no_sync(self.unet) if not last else contextlib.nullcontext():
                with accelerator.autocast():
                    denoiser = self.denoiser(self.compiled, self.training_labels(batch))
                    loss = self.loss(denoiser, batch.images, batch.generator).mean()
                accelerator.backward(loss / len(micro_batches))
            total = loss.detach() if total is None else total + loss.detach()
        if args.max_grad_norm:  # 0 or unset: no clipping
            accelerator.clip_grad_norm_(self.trained_parameters(), args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.trained_parameters())
        if self.posthoc is not None:
            self.posthoc.update(self.trained_parameters())
        return {"train_loss": total / len(micro_batches)}

    @torch.no_grad()
    def validation_losses(self, images, generator, labels=None):
        with self.accelerator.autocast():
            return {"val_loss": self.loss(self.denoiser(self.unet, labels), images, generator).mean()}

    # ------------------------------------------------------------------ sampling and export

    def averaged_unet(self, device=None):
        """The weights to sample and export: the EMA if kept, else the trained ones (a copy, eval mode,
        on ``device``: default the accelerator's)."""
        from diffusers import UNet2DModel

        trained = self.accelerator.unwrap_model(self.unet)
        model = UNet2DModel.from_config(trained.config)
        model.load_state_dict(trained.state_dict())
        if self.ema is not None:
            self.ema.copy_to(model.parameters())
        return model.to(device or self.accelerator.device).eval()

    def make_pipeline(self, device="cpu"):
        """The exported pipeline, holding ``averaged_unet(device)`` and the model type's scheduler."""
        raise NotImplementedError

    def grid_samplers(self) -> dict:
        """{grid name: (sampler name in ``samplers``, steps, call options)} for the sample grids."""
        raise NotImplementedError

    def grid_seconds(self, num_images: int, **call_options) -> float:
        """One round of grids, estimated from one timed sampling step of one batch per grid: a grid costs
        its network evaluations (batches x NFE) times that."""
        import math
        import time

        from smallgen.sampling import draw_images, network_evaluations, with_sampler

        pipeline = self.make_pipeline(self.accelerator.device)
        batch = min(num_images, self.train_args.eval_batch_size)
        total = 0.0
        for sampler, steps, options in self.grid_samplers().values():
            sampling = with_sampler(pipeline, self.samplers[sampler])
            start = time.perf_counter()
            draw_images(sampling, batch, batch_size=batch, num_inference_steps=1, **options, **call_options)
            per_step = (time.perf_counter() - start) / network_evaluations(sampling.scheduler, 1)
            total += per_step * network_evaluations(sampling.scheduler, steps) * math.ceil(num_images / batch)
        return total

    @torch.no_grad()
    def sample_grids(self, num_images: int, seed: int, **call_options) -> dict[str, torch.Tensor]:
        """Each grid drawn by the exported pipeline with its sampler (``smallgen.sampling``);
        ``call_options`` go to every pipeline call besides each grid's own."""
        from smallgen.sampling import draw_images, with_sampler

        pipeline = self.make_pipeline(self.accelerator.device)
        if self.train_args.channels_last:
            pipeline.unet.to(memory_format=torch.channels_last)
        return {name: draw_images(with_sampler(pipeline, self.samplers[sampler]), num_images, seed,
                                  batch_size=self.train_args.eval_batch_size, num_inference_steps=steps, **options, **call_options)
                for name, (sampler, steps, options) in self.grid_samplers().items()}
