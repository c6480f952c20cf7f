"""``--model_type vae|dcgan|vaegan``: the baselines of seeds 002/003, exported as VAE/GAN pipelines.

Each does one optimizer step per batch (the GANs: discriminator, then generator) and samples by
decoding prior latents, image i's latent drawn from its own (seed, i) generator.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch

from models.losses import gan_loss, gaussian_kl, reconstruction_error
from smallgen.arguments import flag
from smallgen.errors import ConfigError
from smallgen.objectives.base import ModelCardText, Objective


@dataclass
class BaselineArguments:
    """The size of a baseline's networks."""

    latent_dim: int | None = flag(None, "Latent size; unset: vae 128, dcgan 100, vaegan 256 (seeds 002/003).",
                                  group="baselines", at_least=1)
    base_channels: int = flag(64, "First conv width (doubles per level).", group="baselines", at_least=1)


@dataclass
class VAEArguments:
    kl_weight: float = flag(1.0, "Weight of the KL term.", group="baselines", at_least=0)


@dataclass
class VAEGANArguments:
    adversarial_weight: float = flag(0.1, "Weight of the adversarial term.", group="baselines", at_least=0)


@dataclass
class GANEvaluationArguments:
    """evaluate_fid.py: how a GAN pipeline samples."""

    gan_batchnorm: str = flag(
        "eval", "GAN pipelines: BatchNorm with the running statistics (eval) or each batch's own (train, as "
                "PyTorch's GAN example samples; images then depend on --batch_size).", group="GAN pipelines",
        choices=("eval", "train"))


def gan_evaluation_settings(cls, pipeline, args) -> list[dict]:
    return [{"batchnorm": args.gan_batchnorm}]


class BaselineObjective(Objective):
    pipeline_component = "decoder"  # the pipeline's argument that holds pipeline_network()
    supports_ema = False
    default_latent_dim = 128

    @property
    def latent_dim(self) -> int:
        """--latent_dim, or this model type's own default when unset."""
        return self.model_args.latent_dim or self.default_latent_dim

    @classmethod
    def check_arguments(cls, data_args, model_args, train_args) -> None:
        resolution = data_args.resolution
        if train_args.gradient_accumulation_steps != 1:
            raise ConfigError("--gradient_accumulation_steps applies to UNet model types: baselines step every batch")
        if train_args.use_ema and not cls.supports_ema:
            raise ConfigError(f"--use_ema does not apply to --model_type {cls.name}")
        if resolution < 8 or resolution & (resolution - 1):
            raise ConfigError(f"baselines need a power-of-two --resolution >= 8; got {resolution}")

    def setup(self, accelerator, max_train_steps: int) -> None:
        if self.train_args.channels_last:  # before the optimizers take the parameters
            for network in self.networks.values():
                network.to(memory_format=torch.channels_last)
        super().setup(accelerator, max_train_steps)
        # The steps call compiled wrappers (--torch_compile); checkpoints and exports keep the plain networks.
        self.compiled = {name: torch.compile(network) if self.train_args.torch_compile else network
                        for name, network in self.networks.items()}

    def latents(self, n: int, generator) -> torch.Tensor:
        return torch.randn((n, self.latent_dim), generator=generator, device=self.accelerator.device)

    def update(self, name: str, loss: torch.Tensor) -> None:
        """Backward, clip, step and clear one network's optimizer."""
        network, optimizer = self.networks[name], self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        if self.train_args.max_grad_norm:  # 0 or unset: no clipping
            self.accelerator.clip_grad_norm_(network.parameters(), self.train_args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def decoder(self) -> torch.nn.Module:
        raise NotImplementedError

    def pipeline_network(self) -> torch.nn.Module:
        """The network the exported pipeline samples with (unwrapped)."""
        return self.decoder()

    def make_pipeline(self, device="cpu"):
        """The exported pipeline around ``pipeline_network()``, in eval mode (BatchNorm running statistics)."""
        import pipelines

        network = self.pipeline_network().to(device).eval()
        return getattr(pipelines, self.pipeline_classes[0])(**{self.pipeline_component: network})

    @torch.no_grad()
    def sample_grids(self, num_images: int, seed: int) -> dict[str, torch.Tensor]:
        """{"": uint8 images} drawn by the exported pipeline; the networks' modes are restored after."""
        from smallgen.sampling import draw_images

        modes = [(network, network.training) for network in self.networks.values()]
        try:
            pipeline = self.make_pipeline(self.accelerator.device)
            pipeline.set_progress_bar_config(disable=True)
            return {"": draw_images(pipeline, num_images, seed, batch_size=self.train_args.eval_batch_size)}
        finally:
            for network, training in modes:
                network.train(training)

    def model_card(self) -> ModelCardText:
        m = self.model_args
        return ModelCardText(
            description=(f"A {self.name.upper()} baseline (latent {self.latent_dim}, {self.data_args.resolution} px) "
                         f"trained with smallgen's `train_unconditional.py`. Load it with `{self.pipeline_classes[0]}."
                         "from_pretrained` (smallgen installed) or `DiffusionPipeline.from_pretrained(..., "
                         "trust_remote_code=True)`: the pipeline and model code are in this folder."),
            tags=[self.name, "baseline"],
            arguments={"model_type": m.model_type, **{f.name: getattr(m, f.name) for part in self.arguments
                                                      for f in dataclasses.fields(part)}},
            trust_remote_code=True,
        )


class VAEObjective(BaselineObjective):
    """Negative ELBO: summed squared error + kl_weight * KL."""

    name = "vae"
    arguments = (BaselineArguments, VAEArguments)
    pipeline_classes = ("VAEPipeline",)
    pipeline_component = "vae"
    validation_names = ("val_loss", "val_recon_loss", "val_kl_loss")

    def build_networks(self):
        from models.baselines import ConvVAE

        m = self.model_args
        return {"vae": ConvVAE(self.data_args.resolution, self.latent_dim, 3, m.base_channels)}

    def vae_losses(self, vae, images, noise, prior=None):
        with self.accelerator.autocast():
            reconstruction, mean, logvar, generated = vae(images, noise, prior)
        recon = reconstruction_error(reconstruction, images).mean()
        kl = gaussian_kl(mean, logvar).mean()
        return recon + self.model_args.kl_weight * kl, recon, kl, reconstruction, generated

    def train_step(self, micro_batches):
        (batch,) = micro_batches  # baselines step every batch: no accumulation
        images, generator = batch.images, batch.generator
        loss, recon, kl, _, _ = self.vae_losses(self.compiled["vae"], images, self.latents(len(images), generator))
        self.update("vae", loss)
        return {"train_loss": loss.detach(), "recon_loss": recon.detach(), "kl_loss": kl.detach()}

    @torch.no_grad()
    def validation_losses(self, images, generator, labels=None):
        loss, recon, kl, _, _ = self.vae_losses(self.networks["vae"], images, self.latents(len(images), generator))
        return {"val_loss": loss, "val_recon_loss": recon, "val_kl_loss": kl}

    def decoder(self):
        return self.accelerator.unwrap_model(self.networks["vae"]).decoder

    def pipeline_network(self):
        return self.accelerator.unwrap_model(self.networks["vae"])


class DCGANObjective(BaselineObjective):
    """Alternating discriminator and generator steps with the non-saturating loss."""

    name = "dcgan"
    arguments = (BaselineArguments,)
    pipeline_classes = ("GANPipeline",)
    evaluation_arguments = (GANEvaluationArguments,)
    evaluation_settings = classmethod(gan_evaluation_settings)
    default_latent_dim = 100

    def build_networks(self):
        from models.baselines import ConvDecoder, ConvDiscriminator

        m, resolution = self.model_args, self.data_args.resolution
        return {"generator": ConvDecoder(resolution, self.latent_dim, 3, m.base_channels),
                "discriminator": ConvDiscriminator(resolution, 3, m.base_channels)}

    supports_ema = True  # --use_ema: an EMA of the generator's weights is sampled and exported

    def __init__(self, data_args, model_args, train_args, labels=None):
        super().__init__(data_args, model_args, train_args, labels)
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
        g, d = self.compiled["generator"], self.compiled["discriminator"]
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
    arguments = (BaselineArguments, VAEArguments, VAEGANArguments)
    pipeline_classes = ("GANPipeline",)
    evaluation_arguments = (GANEvaluationArguments,)
    evaluation_settings = classmethod(gan_evaluation_settings)
    pipeline_component = "decoder"
    default_latent_dim = 256

    def build_networks(self):
        from models.baselines import ConvDiscriminator

        m = self.model_args
        return {**VAEObjective.build_networks(self),
                "discriminator": ConvDiscriminator(self.data_args.resolution, 3, m.base_channels)}

    def train_step(self, micro_batches):
        (batch,) = micro_batches  # baselines step every batch: no accumulation
        images, generator = batch.images, batch.generator
        vae, d = self.compiled["vae"], self.compiled["discriminator"]
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

    def pipeline_network(self):
        return self.decoder()  # the GANPipeline samples the VAE's decoder
