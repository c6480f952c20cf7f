"""The baselines' objectives (VAE, DCGAN, VAE-GAN) and their training loop.

The loop shares the diffusion run's machinery (``start_run``/``restore``: data feeding, atomic
checkpoints, exact resume from per-step seeded generators, metrics, curves, sample grids,
export, push). Each objective owns its networks and optimizers and does one optimizer step per
batch, alternating discriminator and generator for the GANs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import torch
import torch.nn.functional as F

from smallgen.errors import ConfigError
from smallgen.export import save_json

SAMPLE_SEED_OFFSET = 1234  # sample grids use latents from (seed + offset): the same every epoch


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) summed over latent dimensions, averaged over the batch."""
    return (-0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum(dim=1)).mean()


def reconstruction_error(reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Squared error summed over pixels, averaged over the batch (a Gaussian log-likelihood up to scale)."""
    return (reconstruction.float() - images.float()).pow(2).sum(dim=(1, 2, 3)).mean()


def gan_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Non-saturating GAN loss: BCE of the logits against all-real or all-fake labels."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits.float(), target)


class Objective:
    """Networks + optimizers + one training step; subclasses say what is trained and how."""

    kind = ""  # exported pipeline: "vae" or "gan"
    curves = ()  # metric names logged every step

    def __init__(self, model_args, data_args, train_args, accelerator):
        self.args, self.train_args, self.accelerator = model_args, train_args, accelerator
        self.resolution = data_args.resolution
        self.networks: dict[str, torch.nn.Module] = self.build()
        self.optimizers = {name: torch.optim.Adam(net.parameters(), lr=train_args.learning_rate,
                                                  betas=(train_args.adam_beta1, train_args.adam_beta2),
                                                  eps=train_args.adam_epsilon,
                                                  weight_decay=train_args.adam_weight_decay)
                           for name, net in self.networks.items()}

    def build(self) -> dict:
        raise NotImplementedError

    def prepare(self) -> None:
        names = list(self.networks)
        prepared = self.accelerator.prepare(*self.networks.values(), *self.optimizers.values())
        self.networks = dict(zip(names, prepared[:len(names)]))
        self.optimizers = dict(zip(names, prepared[len(names):]))

    def num_parameters(self) -> str:
        return ", ".join(f"{name} {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M"
                         for name, net in self.networks.items())

    def update(self, name: str, loss: torch.Tensor) -> None:
        """Backward, clip, step and clear one network's optimizer."""
        network, optimizer = self.networks[name], self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        if self.train_args.max_grad_norm is not None:
            self.accelerator.clip_grad_norm_(network.parameters(), self.train_args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn((n, self.args.latent_dim), generator=generator, device=self.accelerator.device)

    def train_step(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def validation(self, images: torch.Tensor) -> dict[str, float]:
        return {}

    def export_model(self) -> torch.nn.Module:
        """The network the pipeline samples with (unwrapped, on the CPU, eval mode)."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, num_images: int, seed: int) -> torch.Tensor:
        """uint8 (N, 3, R, R) from fixed latents, in eval mode (BatchNorm running statistics)."""
        from smallgen.sampling import to_uint8

        decoder = self.decoder()
        was_training = decoder.training
        decoder.eval()
        generator = torch.Generator(self.accelerator.device).manual_seed(seed)
        images = decoder(self.latents(num_images, generator))
        decoder.train(was_training)
        return to_uint8(images).cpu()

    def decoder(self) -> torch.nn.Module:
        raise NotImplementedError


class VAEObjective(Objective):
    """Negative ELBO: summed squared error + kl_weight * KL."""

    kind = "vae"
    curves = ("train_loss", "recon_loss", "kl_loss")

    def build(self):
        from models.baselines import ConvVAE

        return {"vae": ConvVAE(self.resolution, self.args.latent_dim, 3, self.args.base_channels)}

    def _losses(self, vae, images, noise):
        with self.accelerator.autocast():
            reconstruction, mean, logvar, _ = vae(images, noise)
        recon, kl = reconstruction_error(reconstruction, images), gaussian_kl(mean.float(), logvar.float())
        return recon + self.args.kl_weight * kl, recon, kl

    def train_step(self, images, generator):
        noise = self.latents(images.shape[0], generator)
        loss, recon, kl = self._losses(self.networks["vae"], images, noise)
        self.update("vae", loss)
        return {"train_loss": loss.detach(), "recon_loss": recon.detach(), "kl_loss": kl.detach()}

    @torch.no_grad()
    def validation(self, images):
        from smallgen.data import uint8_to_model_range

        vae = self.networks["vae"]
        vae.eval()
        totals, count = torch.zeros(3, device=self.accelerator.device), 0
        batch = self.train_args.eval_batch_size
        for b, start in enumerate(range(0, len(images), batch)):
            clean = uint8_to_model_range(images[start:start + batch].to(self.accelerator.device))
            noise = self.latents(len(clean), torch.Generator(self.accelerator.device).manual_seed(b))
            totals += torch.stack(self._losses(vae, clean, noise)) * len(clean)
            count += len(clean)
        vae.train()
        loss, recon, kl = (totals / max(count, 1)).tolist()
        return {"val_loss": loss, "val_recon_loss": recon, "val_kl_loss": kl}

    def decoder(self):
        return self.accelerator.unwrap_model(self.networks["vae"]).decoder

    def export_model(self):
        return self.accelerator.unwrap_model(self.networks["vae"]).to("cpu").eval()


class DCGANObjective(Objective):
    """Alternating discriminator and generator steps with the non-saturating loss."""

    kind = "gan"
    curves = ("d_loss", "g_loss")

    def build(self):
        from models.baselines import ConvDecoder, ConvDiscriminator

        return {"generator": ConvDecoder(self.resolution, self.args.latent_dim, 3, self.args.base_channels),
                "discriminator": ConvDiscriminator(self.resolution, 3, self.args.base_channels)}

    def train_step(self, images, generator):
        g, d = self.networks["generator"], self.networks["discriminator"]
        with self.accelerator.autocast():
            fake = g(self.latents(images.shape[0], generator))
            d_loss = gan_loss(d(images), True) + gan_loss(d(fake.detach()), False)
        self.update("discriminator", d_loss)
        with self.accelerator.autocast():
            g_loss = gan_loss(d(fake), True)
        self.update("generator", g_loss)
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}

    def decoder(self):
        return self.accelerator.unwrap_model(self.networks["generator"])

    def export_model(self):
        return self.decoder().to("cpu").eval()


class VAEGANObjective(VAEObjective):
    """VAE loss + adversarial_weight * GAN loss on reconstructions and prior samples; D sees all three."""

    kind = "gan"
    curves = ("train_loss", "recon_loss", "kl_loss", "d_loss", "g_loss")

    def build(self):
        from models.baselines import ConvDiscriminator

        return {**VAEObjective.build(self), "discriminator": ConvDiscriminator(self.resolution, 3, self.args.base_channels)}

    def train_step(self, images, generator):
        vae, d = self.networks["vae"], self.networks["discriminator"]
        noise = self.latents(images.shape[0], generator)
        prior = self.latents(images.shape[0], generator)
        with self.accelerator.autocast():
            reconstruction, mean, logvar, generated = vae(images, noise, prior)
            d_loss = gan_loss(d(images), True) + 0.5 * (gan_loss(d(reconstruction.detach()), False)
                                                         + gan_loss(d(generated.detach()), False))
        self.update("discriminator", d_loss)
        with self.accelerator.autocast():
            g_loss = 0.5 * (gan_loss(d(reconstruction), True) + gan_loss(d(generated), True))
        recon, kl = reconstruction_error(reconstruction, images), gaussian_kl(mean.float(), logvar.float())
        loss = recon + self.args.kl_weight * kl + self.args.adversarial_weight * g_loss
        self.update("vae", loss)
        return {"train_loss": loss.detach(), "recon_loss": recon.detach(), "kl_loss": kl.detach(),
                "d_loss": d_loss.detach(), "g_loss": g_loss.detach()}

    def export_model(self):
        return self.decoder().to("cpu").eval()  # the GANPipeline samples the decoder


OBJECTIVES = {"vae": VAEObjective, "dcgan": DCGANObjective, "vaegan": VAEGANObjective}


def train_baseline(data_args, model_args, args) -> dict:
    """Train a VAE, DCGAN or VAE-GAN and export it as a VAEPipeline/GANPipeline folder."""
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from smallgen.export import push_to_hub, save_baseline_pipeline, write_model_card
    from smallgen.plots import plot_loss_curves, read_metrics, save_image_grid
    from smallgen.training import (
        TrainingDiverged,
        _append_metrics,
        _log_images,
        derived_seed,
        open_logs,
        restore,
        save_checkpoint,
        start_run,
        step_generator,
    )

    if args.gradient_accumulation_steps != 1:
        raise ConfigError("--gradient_accumulation_steps applies to ddpm only: baselines step every batch")
    if args.use_ema:
        raise ConfigError("--use_ema applies to ddpm only")
    if data_args.resolution < 8 or data_args.resolution & (data_args.resolution - 1):
        raise ConfigError(f"baselines need a power-of-two --resolution >= 8; got {data_args.resolution}")

    run = start_run(data_args, args)
    accelerator = run.accelerator
    main, say = accelerator.is_main_process, accelerator.print
    objective = OBJECTIVES[model_args.model_type](model_args, data_args, args, accelerator)
    say(f"model: {model_args.model_type}, {objective.num_parameters()} parameters")
    lr_schedulers = [get_scheduler(args.lr_scheduler, optimizer=opt, num_warmup_steps=args.lr_warmup_steps,
                                   num_training_steps=run.max_train_steps) for opt in objective.optimizers.values()]
    objective.prepare()
    for scheduler in lr_schedulers:
        accelerator.register_for_checkpointing(scheduler)
    global_step, first_epoch, elapsed_before = restore(run, args)

    metrics_path = open_logs(run, args, global_step, data_args, model_args)

    progress = tqdm(total=run.max_train_steps, initial=global_step, desc="training", unit="step",
                    disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    sums: dict[str, torch.Tensor] = {}
    count, images_in_interval, interval_start = 0, 0, time.perf_counter()
    run_start = time.perf_counter() - elapsed_before
    last, last_val, last_checkpoint, sample_paths = {}, {}, run.resume_path, []

    def check_finite(values: dict) -> None:
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            progress.close()
            where = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was saved yet"
            raise TrainingDiverged(f"{', '.join(f'{k} = {v}' for k, v in bad.items())} at step {global_step}; "
                                   f"stopping. {where}. Try a lower --learning_rate or --max_grad_norm 1.")

    for epoch in range(first_epoch, run.num_epochs):
        for net in objective.networks.values():
            net.train()
        batches = run.feeder.epoch(epoch, global_step - epoch * run.steps_per_epoch)
        for _ in range(run.steps_per_epoch - (global_step - epoch * run.steps_per_epoch)):
            torch.manual_seed(derived_seed(args.seed, global_step, -1, accelerator.process_index))
            generator = step_generator(accelerator.device, args.seed, global_step, 0, accelerator.process_index)
            images = run.feeder.augment(next(batches), generator)
            for key, value in objective.train_step(images, generator).items():
                sums[key] = sums.get(key, 0) + value
            for scheduler in lr_schedulers:
                scheduler.step()
            count += 1
            images_in_interval += images.shape[0] * accelerator.num_processes
            global_step += 1
            progress.update(1)

            log_now = global_step % args.logging_steps == 0 or global_step == run.max_train_steps
            checkpoint_now = args.checkpointing_steps and global_step % args.checkpointing_steps == 0
            if log_now or checkpoint_now:
                last = {k: accelerator.reduce(v / count, "mean").item() for k, v in sums.items()}  # one host sync
                check_finite(last)
                record = {"step": global_step, "epoch": epoch, **last, "lr": lr_schedulers[0].get_last_lr()[0],
                          "images_per_second": images_in_interval / (time.perf_counter() - interval_start)}
                progress.set_postfix({k: f"{v:.4g}" for k, v in last.items()})
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=global_step)
                if main:
                    _append_metrics(metrics_path, record)
                sums, count, images_in_interval, interval_start = {}, 0, 0, time.perf_counter()
            if checkpoint_now:
                last_checkpoint = save_checkpoint(
                    accelerator, args.output_dir, global_step, args.checkpoints_total_limit,
                    {"global_step": global_step, "epoch": epoch, "elapsed_seconds": time.perf_counter() - run_start})
            if global_step >= run.max_train_steps:
                break

        if run.validation_images is not None:
            last_val = objective.validation(run.validation_images)
            check_finite(last_val)
            accelerator.log(last_val, step=global_step)
        if main:
            _append_metrics(metrics_path, {"step": global_step, "epoch": epoch, **last_val,
                                           "elapsed_seconds": time.perf_counter() - run_start})
            plot_loss_curves(read_metrics(metrics_path), os.path.join(args.output_dir, "loss_curves.png"),
                             title=f"{model_args.model_type} training losses")
        last_epoch = epoch == run.num_epochs - 1 or global_step >= run.max_train_steps
        if main and ((epoch + 1) % args.save_images_epochs == 0 or last_epoch):
            images = objective.sample(args.num_sample_images, args.seed + SAMPLE_SEED_OFFSET)
            path = save_image_grid(images, os.path.join(args.output_dir, "samples", f"epoch_{epoch:04d}.png"))
            sample_paths = [os.path.relpath(path, args.output_dir)]
            _log_images(accelerator, "samples", images, global_step)
        accelerator.wait_for_everyone()
        if global_step >= run.max_train_steps:
            break
    progress.close()

    results = {**last, **last_val, "global_step": global_step, "training_seconds": time.perf_counter() - run_start}
    if main:
        save_baseline_pipeline(objective.kind, objective.export_model(), args.output_dir)
        save_json(os.path.join(args.output_dir, "results.json"), results)
        pipeline_class = {"vae": "VAEPipeline", "gan": "GANPipeline"}[objective.kind]
        write_model_card(
            args.output_dir,
            model_description=(
                f"A {model_args.model_type.upper()} baseline (latent {model_args.latent_dim}, {data_args.resolution} px) "
                f"trained with smallgen's `train_unconditional.py`. Load it with `{pipeline_class}.from_pretrained` "
                "(smallgen installed) or `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`: the "
                "pipeline and model code are in this folder."
            ),
            dataset=data_args.dataset_name,
            arguments={**{k: v for k, v in dataclasses.asdict(model_args).items() if not k.startswith(("ddpm", "ddim",
                       "beta", "prediction", "variance", "snr"))},
                       **args.to_public_dict(),
                       **{k: v for k, v in dataclasses.asdict(data_args).items() if v is not None}},
            metrics={k: v for k, v in results.items() if v is not None},
            sample_images=sample_paths,
            tags=[model_args.model_type, "baseline"],
            trust_remote_code=True,
        )
        say(f"pipeline saved to {args.output_dir}")
        if args.push_to_hub:
            repo_id = push_to_hub(args.output_dir, args.hub_model_id, args.hub_token, args.hub_private_repo)
            say(f"pushed to the Hub as {repo_id}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results
