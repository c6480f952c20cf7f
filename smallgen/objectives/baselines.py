"""``--model_type vae|dcgan|vaegan``: the baselines of seeds 002/003, exported as VAE/GAN pipelines.

Each does one optimizer step per batch (the GANs: discriminator, then generator) and samples by
decoding prior latents, image i's latent drawn from its own (seed, i) generator.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from models.losses import gan_loss, gaussian_kl, reconstruction_error
from smallgen.errors import ConfigError
from smallgen.objectives.base import ModelCardText, Objective


class BaselineObjective(Objective):
    pipeline_kind = ""  # "vae" or "gan": which pipeline the export writes
    supports_ema = False

    def __init__(self, data_args, model_args, train_args):
        super().__init__(data_args, model_args, train_args)
        self.check_arguments()
        self.networks = self.build_networks()

    def check_arguments(self) -> None:
        args, resolution = self.train_args, self.data_args.resolution
        if args.gradient_accumulation_steps != 1:
            raise ConfigError("--gradient_accumulation_steps applies to ddpm only: baselines step every batch")
        if args.use_ema and not self.supports_ema:
            raise ConfigError("--use_ema applies to ddpm and dcgan only")
        if resolution < 8 or resolution & (resolution - 1):
            raise ConfigError(f"baselines need a power-of-two --resolution >= 8; got {resolution}")

    def latents(self, n: int, generator) -> torch.Tensor:
        return torch.randn((n, self.model_args.latent_dim), generator=generator, device=self.accelerator.device)

    def decoder(self) -> torch.nn.Module:
        raise NotImplementedError

    @torch.no_grad()
    def sample_grids(self, num_images: int, seed: int) -> dict[str, torch.Tensor]:
        """{"": uint8 images} decoded in eval mode (BatchNorm running statistics)."""
        from smallgen.sampling import to_uint8
        from smallgen.seeding import image_generators, per_image_randn

        decoder = self.decoder()
        was_training = decoder.training
        decoder.eval()
        device = self.accelerator.device
        latents = per_image_randn(image_generators(seed, range(num_images), device), (self.model_args.latent_dim,),
                                  device)
        images = decoder(latents)
        decoder.train(was_training)
        return {"": to_uint8(images).cpu()}

    def export(self, output_dir: str) -> ModelCardText:
        from smallgen.export import BASELINE_PIPELINES, save_baseline_pipeline

        save_baseline_pipeline(self.pipeline_kind, self.export_model(), output_dir)
        pipeline_class = BASELINE_PIPELINES[self.pipeline_kind].class_name
        m = self.model_args
        return ModelCardText(
            description=(f"A {self.name.upper()} baseline (latent {m.latent_dim}, {self.data_args.resolution} px) "
                         f"trained with smallgen's `train_unconditional.py`. Load it with `{pipeline_class}."
                         "from_pretrained` (smallgen installed) or `DiffusionPipeline.from_pretrained(..., "
                         "trust_remote_code=True)`: the pipeline and model code are in this folder."),
            tags=[self.name, "baseline"],
            arguments={k: v for k, v in dataclasses.asdict(m).items()
                       if k in ("model_type", "latent_dim", "base_channels", "kl_weight", "adversarial_weight")},
            trust_remote_code=True,
        )

    def export_model(self) -> torch.nn.Module:
        """The network the pipeline samples with (unwrapped, on the CPU, eval mode)."""
        return self.decoder().to("cpu").eval()


class VAEObjective(BaselineObjective):
    """Negative ELBO: summed squared error + kl_weight * KL."""

    name = "vae"
    pipeline_kind = "vae"
    validation_names = ("val_loss", "val_recon_loss", "val_kl_loss")

    def build_networks(self):
        from models.baselines import ConvVAE

        m = self.model_args
        return {"vae": ConvVAE(self.data_args.resolution, m.latent_dim, 3, m.base_channels)}

    def vae_losses(self, vae, images, noise, prior=None):
        with self.accelerator.autocast():
            reconstruction, mean, logvar, generated = vae(images, noise, prior)
        recon = reconstruction_error(reconstruction, images).mean()
        kl = gaussian_kl(mean, logvar).mean()
        return recon + self.model_args.kl_weight * kl, recon, kl, reconstruction, generated

    def train_step(self, micro_batches):
        (batch,) = micro_batches  # baselines step every batch: no accumulation
        images, generator = batch.images, batch.generator
        loss, recon, kl, _, _ = self.vae_losses(self.networks["vae"], images, self.latents(len(images), generator))
        self.update("vae", loss)
        return {"train_loss": loss.detach(), "recon_loss": recon.detach(), "kl_loss": kl.detach()}

    @torch.no_grad()
    def validation_losses(self, images, generator, labels=None):
        loss, recon, kl, _, _ = self.vae_losses(self.networks["vae"], images, self.latents(len(images), generator))
        return {"val_loss": loss, "val_recon_loss": recon, "val_kl_loss": kl}

    def decoder(self):
        return self.accelerator.unwrap_model(self.networks["vae"]).decoder

    def export_model(self):
        return self.accelerator.unwrap_model(self.networks["vae"]).to("cpu").eval()


class DCGANObjective(BaselineObjective):
    """Alternating discriminator and generator steps with the non-saturating loss."""

    name = "dcgan"
    pipeline_kind = "gan"

    def build_networks(self):
        from models.baselines import ConvDecoder, ConvDiscriminator

        m, resolution = self.model_args, self.data_args.resolution
        return {"generator": ConvDecoder(resolution, m.latent_dim, 3, m.base_channels),
                "discriminator": ConvDiscriminator(resolution, 3, m.base_channels)}

    supports_ema = True  # --use_ema: an EMA of the generator's weights is sampled and exported

    def __init__(self, data_args, model_args, train_args):
        super().__init__(data_args, model_args, train_args)
        self.ema = None

    def setup(self, accelerator, max_train_steps: int) -> None:
        from diffusers.training_utils import EMAModel

        super().setup(accelerator, max_train_steps)
        args = self.train_args
        if args.use_ema:
            self.ema = EMAModel(self.networks["generator"].parameters(), decay=args.ema_max_decay,
                                use_ema_warmup=args.ema_warmup, inv_gamma=args.ema_inv_gamma, power=args.ema_power,
                                foreach=True)

    def checkpoint_objects(self) -> dict:
        return {} if self.ema is None else {"ema": self.ema}

    def train_step(self, micro_batches):
        logged = self.adversarial_step(micro_batches)
        if self.ema is not None:
            self.ema.step(self.networks["generator"].parameters())
        return logged

    def adversarial_step(self, micro_batches):
        (batch,) = micro_batches  # baselines step every batch: no accumulation
        images, generator = batch.images, batch.generator
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
        """The generator, or with --use_ema a copy holding the EMA weights (and the live BatchNorm statistics)."""
        generator = self.accelerator.unwrap_model(self.networks["generator"])
        if self.ema is None:
            return generator
        averaged = copy.deepcopy(generator)
        self.ema.copy_to(averaged.parameters())
        return averaged


class VAEGANObjective(VAEObjective):
    """VAE loss + adversarial_weight * GAN loss on reconstructions and prior samples; D sees all three."""

    name = "vaegan"
    pipeline_kind = "gan"

    def build_networks(self):
        from models.baselines import ConvDiscriminator

        m = self.model_args
        return {**VAEObjective.build_networks(self),
                "discriminator": ConvDiscriminator(self.data_args.resolution, 3, m.base_channels)}

    def train_step(self, micro_batches):
        (batch,) = micro_batches  # baselines step every batch: no accumulation
        images, generator = batch.images, batch.generator
        vae, d = self.networks["vae"], self.networks["discriminator"]
        noise, prior = self.latents(len(images), generator), self.latents(len(images), generator)
        loss, recon, kl, reconstruction, generated = self.vae_losses(vae, images, noise, prior)
        with self.accelerator.autocast():
            d_loss = gan_loss(d(images), True) + 0.5 * (gan_loss(d(reconstruction.detach()), False)
                                                         + gan_loss(d(generated.detach()), False))
        self.update("discriminator", d_loss)
        with self.accelerator.autocast():
            g_loss = 0.5 * (gan_loss(d(reconstruction), True) + gan_loss(d(generated), True))
        loss = loss + self.model_args.adversarial_weight * g_loss
        self.update("vae", loss)
        return {"train_loss": loss.detach(), "recon_loss": recon.detach(), "kl_loss": kl.detach(),
                "d_loss": d_loss.detach(), "g_loss": g_loss.detach()}

    def export_model(self):
        return self.decoder().to("cpu").eval()  # the GANPipeline samples the decoder
