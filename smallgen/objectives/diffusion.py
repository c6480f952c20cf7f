"""``--model_type ddpm``: a diffusers UNet2DModel trained with the DDPM loss, exported as DDPMPipeline."""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from smallgen.errors import ConfigError
from smallgen.objectives.base import MicroBatch, ModelCardText, Objective


def scheduler_config(model_args) -> dict:
    """diffusers' DDPMScheduler arguments for this run: the exported scheduler and our samplers alike."""
    from models.schedulers import make_betas

    config = dict(num_train_timesteps=model_args.ddpm_num_steps, beta_start=model_args.beta_start,
                  beta_end=model_args.beta_end, beta_schedule=model_args.diffusers_beta_schedule,
                  prediction_type=model_args.prediction_type, variance_type=model_args.variance_type,
                  clip_sample=True)
    if model_args.ddpm_beta_schedule == "sigmoid":
        # diffusers' DDIMScheduler has no sigmoid schedule: store the betas so DDIM loads too.
        config["trained_betas"] = make_betas("sigmoid", model_args.ddpm_num_steps, model_args.beta_start,
                                             model_args.beta_end).tolist()
    return config


def make_samplers(model_args) -> dict:
    """{name: (sampler, steps, eta)} for the sample grids, from the same config the export writes."""
    from models.schedulers import DDIMSampler, DDPMSampler

    config = scheduler_config(model_args)
    ddim_config = {k: v for k, v in config.items() if k != "variance_type"}
    return {"ddpm": (DDPMSampler(**config), model_args.ddpm_num_inference_steps, None),
            "ddim": (DDIMSampler(**ddim_config), model_args.ddim_num_inference_steps, model_args.ddim_eta)}


class DiffusionObjective(Objective):
    name = "ddpm"
    validation_names = ("val_loss",)

    def __init__(self, data_args, model_args, train_args):
        super().__init__(data_args, model_args, train_args)
        from models.losses import DiffusionLoss
        from models.schedulers import NoiseSchedule

        try:
            self.unet = self.make_unet()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if train_args.channels_last:
            self.unet = self.unet.to(memory_format=torch.channels_last)
        self.networks = {"unet": self.unet}
        schedule = NoiseSchedule(model_args.ddpm_num_steps, model_args.beta_start, model_args.beta_end,
                                 model_args.ddpm_beta_schedule, model_args.prediction_type)
        self.loss = DiffusionLoss(schedule, model_args.snr_gamma)
        self.ema = None
        self.compiled = None

    def make_unet(self):
        from models.unet import create_unet

        return create_unet(self.model_args.model_config_name_or_path, self.data_args.resolution)

    def describe(self) -> str:
        return f"UNet2DModel, {sum(p.numel() for p in self.unet.parameters()) / 1e6:.2f}M parameters"

    def make_optimizer(self, network):
        args = self.train_args
        return torch.optim.AdamW(self.trained_parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                 weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
                                 fused=self.accelerator.device.type == "cuda")

    def setup(self, accelerator, max_train_steps: int) -> None:
        from diffusers import UNet2DModel
        from diffusers.training_utils import EMAModel

        args = self.train_args
        if args.use_ema:
            self.ema = EMAModel(self.trained_parameters(), decay=args.ema_max_decay, use_ema_warmup=args.ema_warmup,
                                inv_gamma=args.ema_inv_gamma, power=args.ema_power, foreach=True,
                                model_cls=UNet2DModel, model_config=self.unet.config)
            self.ema.to(accelerator.device)
        super().setup(accelerator, max_train_steps)
        self.unet = self.networks["unet"]
        self.loss.to(accelerator.device)
        self.compiled = torch.compile(self.unet) if args.torch_compile else self.unet

    def trained_parameters(self) -> list:
        """What the optimizer steps, clipping bounds and the EMA averages (the UNet's weights first)."""
        return list(self.unet.parameters())

    def checkpoint_objects(self) -> dict:
        if self.ema is None:
            return {}
        return {"ema": self.ema}

    def denoiser(self, network, batch: MicroBatch | None = None, training: bool = True):
        """The network as the loss sees it: (x_t, t) -> prediction."""
        channels_last = self.train_args.channels_last

        def predict(noisy, timesteps):
            if channels_last:
                noisy = noisy.contiguous(memory_format=torch.channels_last)
            return network(noisy, timesteps).sample

        return predict

    def train_step(self, micro_batches) -> dict[str, torch.Tensor]:
        accelerator, args = self.accelerator, self.train_args
        optimizer = self.optimizers["unet"]
        total, count = None, 0
        for index, batch in enumerate(micro_batches):
            last = index == args.gradient_accumulation_steps - 1
            with accelerator.no_sync(self.unet) if not last else contextlib.nullcontext():
                with accelerator.autocast():
                    loss = self.loss(self.denoiser(self.compiled, batch), batch.images, batch.generator).mean()
                accelerator.backward(loss / args.gradient_accumulation_steps)
            total = loss.detach() if total is None else total + loss.detach()
            count += 1
        if args.max_grad_norm is not None:
            accelerator.clip_grad_norm_(self.trained_parameters(), args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.trained_parameters())
        return {"train_loss": total / count}

    @torch.no_grad()
    def validation_losses(self, images, generator, labels=None):
        batch = MicroBatch(images, generator, labels)
        with self.accelerator.autocast():
            return {"val_loss": self.loss(self.denoiser(self.unet, batch, training=False), images, generator).mean()}

    def averaged_unet(self):
        """The weights to sample and export: the EMA if kept, else the trained ones (a copy, eval mode)."""
        from diffusers import UNet2DModel

        trained = self.accelerator.unwrap_model(self.unet)
        model = UNet2DModel.from_config(trained.config)
        model.load_state_dict(trained.state_dict())
        if self.ema is not None:
            self.ema.copy_to(model.parameters())
        return model.to(self.accelerator.device).eval()

    @torch.no_grad()
    def sample_grids(self, num_images: int, seed: int) -> dict[str, torch.Tensor]:
        from smallgen.sampling import sample_images

        model = self.averaged_unet()
        if self.train_args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return {name: sample_images(model, sampler, num_images, steps, seed=seed,
                                    batch_size=self.train_args.eval_batch_size, eta=eta,
                                    channels_last=self.train_args.channels_last)
                for name, (sampler, steps, eta) in make_samplers(self.model_args).items()}

    def export(self, output_dir: str) -> ModelCardText:
        from smallgen.export import save_ddpm_pipeline

        config = scheduler_config(self.model_args)
        save_ddpm_pipeline(self.averaged_unet().to("cpu"), config, output_dir)
        m = self.model_args
        return ModelCardText(
            description=(f"A DDPM ({m.ddpm_beta_schedule} schedule, T = {m.ddpm_num_steps}, {m.prediction_type} "
                         "prediction) trained with smallgen's `train_unconditional.py`. Load it with `DDPMPipeline` "
                         "or, for fast sampling, `DDIMPipeline`."),
            tags=["ddpm", "ddim"],
            arguments={**{k: v for k, v in config.items() if k != "trained_betas"},
                       **{k: v for k, v in dataclasses.asdict(m).items() if k.startswith(("snr", "model_config"))}},
        )
