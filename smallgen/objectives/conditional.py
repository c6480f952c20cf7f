"""``--model_type ddpm --class_conditional``: a UNet2DModel conditioned on labels, trained for
classifier-free guidance (Ho & Salimans 2022) and exported as ClassConditionalPipeline.

The labels reach the UNet (diffusers' own, with an "identity" class embedding) through a
``LabelEmbedding`` (``pipelines/pipeline_conditional.py``), which holds everything about them:
their names, and either one learned vector per class plus one for "no class", or a learned linear
map of a 0/1 context vector (several labels per image, seed 001's context; "no context" is the
zero vector). It is trained by the same optimizer, averaged by the same EMA and exported beside
the UNet.

Each training image loses its label with probability ``--condition_dropout``, drawn from the
micro-batch's seeded generator so exact resume still holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from smallgen.arguments import flag
from smallgen.errors import ConfigError, UserError
from smallgen.objectives.base import MicroBatch, ModelCardText
from smallgen.objectives.diffusion import DDPM_SCHEDULERS, DDPMArguments, DiffusionObjective, scheduler_config
from smallgen.objectives.unet_base import UNetArguments
from smallgen.sampling import Sampler


@dataclass
class ConditionalArguments:
    """Conditioning on labels with classifier-free guidance."""

    class_conditional: bool = flag(
        False, "Condition the UNet on --label_column (classifier-free guidance).", group="conditional")
    condition_dropout: float = flag(
        0.1, "Probability of training a step's image without its label (Ho & Salimans).", group="conditional",
        at_least=0, below=1)
    guidance_scale: float = flag(
        2.0, "Classifier-free guidance of the sample grids (1: the conditional model).", group="conditional",
        at_least=0)


@dataclass
class GuidanceSweepArguments:
    """evaluate_fid.py: the guidance scales a class-conditional pipeline is scored at."""

    guidance_scale: list[float] = flag(
        [1.0], "Class-conditional pipelines: classifier-free guidance; several values sweep (0 1 2 4).",
        group="class-conditional pipelines", at_least=0)


class ClassConditionalObjective(DiffusionObjective):
    name = "ddpm+class"
    arguments = (UNetArguments, DDPMArguments, ConditionalArguments)
    needs_labels = True
    pipeline_classes = ("ClassConditionalPipeline",)
    evaluation_arguments = (GuidanceSweepArguments,)
    samplers = {name: Sampler(*scheduler) for name, scheduler in DDPM_SCHEDULERS.items()}  # our pipeline runs all
    exported_networks = ("unet", "label_embedding")

    @classmethod
    def evaluation_flags(cls, training_arguments: dict) -> dict:
        return {**super().evaluation_flags(training_arguments),
                "guidance_scale": [training_arguments["guidance_scale"]]}

    @classmethod
    def evaluation_settings(cls, pipeline, args) -> list[dict]:
        """One setting per guidance scale, the labels class-balanced: image i is of class i mod K."""
        classes = len(pipeline.class_names)
        if args.num_samples % classes:
            raise UserError(f"--num_samples {args.num_samples} cannot be split evenly over the pipeline's "
                            f"{classes} classes: use a multiple of {classes}")
        return [{"class_labels": lambda indices: [i % classes for i in indices], "guidance_scale": scale}
                for scale in dict.fromkeys(args.guidance_scale)]

    def __init__(self, data_args, model_args, train_args, labels=None):
        if labels is None:
            raise ConfigError("--class_conditional needs the training labels (--label_column)")
        self.labels = labels
        super().__init__(data_args, model_args, train_args)

    def build_networks(self) -> dict[str, torch.nn.Module]:
        from pipelines.pipeline_conditional import LabelEmbedding

        networks = super().build_networks()
        config = networks["unet"].config
        width = config.time_embedding_dim or config.block_out_channels[0] * 4  # what the UNet adds it to
        networks["label_embedding"] = LabelEmbedding(self.class_names, width, multi_label=self.labels.is_context)
        return networks

    def make_unet(self):
        return super().make_unet(class_embed_type="identity")  # the LabelEmbedding makes the class vector

    @property
    def class_names(self) -> list[str]:
        return self.labels.names or [str(i) for i in range(self.labels.size)]

    def trained_parameters(self) -> list:
        """The UNet's and the label embedding's weights: one AdamW and one EMA over both."""
        return super().trained_parameters() + list(self.networks["label_embedding"].parameters())

    def training_labels(self, batch: MicroBatch) -> torch.Tensor:
        """This batch's labels, each replaced by "no label" with probability p (drawn from its generator)."""
        labels = batch.labels
        if self.model_args.condition_dropout > 0:
            embedding = self.accelerator.unwrap_model(self.networks["label_embedding"])
            drop = torch.rand(labels.shape[:1], generator=batch.generator, device=labels.device)
            keep = (drop >= self.model_args.condition_dropout).view(-1, *[1] * (labels.ndim - 1))
            labels = torch.where(keep, labels, embedding.no_label(len(labels), labels.device).to(labels.dtype))
        return labels

    def denoiser(self, network, labels=None):
        """(x_t, t) -> prediction for these labels (class indices or context rows)."""
        vectors = self.networks["label_embedding"](labels)
        return super().denoiser(lambda x, t: network(x, t, class_labels=vectors))

    def averaged_label_embedding(self, device=None):
        """The label embedding to sample and export: its EMA if kept (a copy, eval mode)."""
        from pipelines.pipeline_conditional import LabelEmbedding

        trained = self.accelerator.unwrap_model(self.networks["label_embedding"])
        copy = LabelEmbedding(**trained.config)
        copy.load_state_dict(trained.state_dict())
        if self.ema is not None:
            unet_count = len(list(self.unet.parameters()))
            for parameter, average in zip(copy.parameters(), self.ema.shadow_params[unet_count:]):
                parameter.data.copy_(average)
        return copy.to(device or self.accelerator.device).eval()

    def make_pipeline(self, device="cpu"):
        from diffusers import DDPMScheduler

        from pipelines import ClassConditionalPipeline

        return ClassConditionalPipeline(unet=self.averaged_unet(device),
                                        scheduler=DDPMScheduler(**scheduler_config(self.model_args)),
                                        label_embedding=self.averaged_label_embedding(device))

    def grid_layout(self, num_images: int) -> tuple[int, dict]:
        """One row per class (or per single context label) of max(1, num_images // K) samples: (images
        per row, the pipeline call's label and guidance keywords)."""
        per_class = max(1, num_images // self.labels.size)
        return per_class, {"class_labels": lambda indices: [i // per_class for i in indices],
                           "guidance_scale": self.model_args.guidance_scale}

    @torch.no_grad()
    def sample_grids(self, num_images: int, seed: int) -> dict:
        per_class, options = self.grid_layout(num_images)
        grids = super().sample_grids(per_class * self.labels.size, seed, **options)
        return {name: (images, per_class) for name, images in grids.items()}

    def evaluation_options(self) -> dict:
        """Classes in turn (image i: label i mod K), at the training run's --guidance_scale."""
        size = self.labels.size
        return {"class_labels": lambda indices: [i % size for i in indices],
                "guidance_scale": self.model_args.guidance_scale}

    def grid_seconds(self, num_images: int) -> float:
        per_class, options = self.grid_layout(num_images)
        return super().grid_seconds(per_class * self.labels.size, **options)

    def model_card(self) -> ModelCardText:
        m = self.model_args
        config = scheduler_config(m)
        names = self.class_names
        kind = "context vectors" if self.labels.is_context else "classes"
        return ModelCardText(
            description=(f"A DDPM conditioned on {len(names)} {kind} ({', '.join(names)}; "
                         f"{m.ddpm_beta_schedule} schedule, T = {m.ddpm_num_steps}) trained with classifier-free "
                         f"guidance (label dropout {m.condition_dropout}) by smallgen's `train_unconditional.py`. "
                         "Sample with `pipeline(class_labels=[0, 3], guidance_scale=2.0)`."),
            tags=["ddpm", "class-conditional", "classifier-free-guidance"],
            arguments={k: v for k, v in config.items() if k != "trained_betas"},
            trust_remote_code=True,
        )
