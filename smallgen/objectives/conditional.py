"""``--model_type ddpm --class_conditional``: a UNet2DModel conditioned on labels, trained for
classifier-free guidance (Ho & Salimans 2022) and exported as ClassConditionalPipeline.

* Class labels: diffusers' own class embedding (``num_class_embeds`` = classes + 1, the last entry
  meaning "no class"), so the exported UNet is a plain diffusers model.
* Context vectors (several 0/1 labels per image, seed 001's context): a ``ContextEmbedding``
  (a learned linear map) feeds the UNet's "identity" class embedding; "no context" is the zero
  vector. It is trained by the same optimizer, averaged by the same EMA and exported beside the UNet.

Each training image loses its label with probability ``--condition_dropout``, drawn from the
micro-batch's seeded generator so exact resume still holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from smallgen.arguments import flag
from smallgen.errors import ConfigError
from smallgen.objectives.base import MicroBatch, ModelCardText
from smallgen.objectives.diffusion import DDPMArguments, DiffusionObjective, make_samplers, scheduler_config
from smallgen.objectives.unet_base import UNetArguments


@dataclass
class ConditionalArguments:
    """Conditioning on labels with classifier-free guidance."""

    class_conditional: bool = flag(
        False, "Condition the UNet on --label_column (classifier-free guidance).", group="conditional")
    condition_dropout: float = flag(
        0.1, "Probability of training a step's image without its label (Ho & Salimans).", group="conditional")
    guidance_scale: float = flag(
        2.0, "Guidance for the sample grids and the pipeline's default (1: conditional).", group="conditional")

    @staticmethod
    def check(arguments, objective) -> None:
        if not 0 <= arguments.condition_dropout < 1:
            raise ConfigError(f"--condition_dropout must be in [0, 1); got {arguments.condition_dropout}")
        if arguments.guidance_scale < 0:
            raise ConfigError(f"--guidance_scale must be non-negative; got {arguments.guidance_scale}")


class ClassConditionalObjective(DiffusionObjective):
    name = "ddpm+class"
    arguments = (UNetArguments, DDPMArguments, ConditionalArguments)
    needs_labels = True
    pipeline_classes = ("ClassConditionalPipeline",)

    def __init__(self, data_args, model_args, train_args, labels=None):
        if labels is None:
            raise ConfigError("--class_conditional needs the training labels (--label_column)")
        self.is_context = labels.is_context
        self.num_classes = labels.size
        self.class_names = labels.names or [str(i) for i in range(self.num_classes)]
        super().__init__(data_args, model_args, train_args)
        self.context_embedding = None
        if self.is_context:
            from pipelines.pipeline_conditional import ContextEmbedding

            config = self.unet.config
            width = config.time_embedding_dim or config.block_out_channels[0] * 4
            self.context_embedding = ContextEmbedding(self.num_classes, width)

    def make_unet(self):
        condition = ({"class_embed_type": "identity"} if self.is_context
                     else {"num_class_embeds": self.num_classes + 1})
        return super().make_unet(**condition)

    def setup(self, accelerator, max_train_steps: int) -> None:
        if self.context_embedding is not None:
            self.context_embedding = accelerator.prepare(self.context_embedding.to(accelerator.device))
        super().setup(accelerator, max_train_steps)

    def trained_parameters(self) -> list:
        extra = [] if self.context_embedding is None else list(self.context_embedding.parameters())
        return super().trained_parameters() + extra

    def checkpoint_objects(self) -> dict:
        parts = super().checkpoint_objects()
        if self.context_embedding is not None:
            parts["context_embedding"] = self.accelerator.unwrap_model(self.context_embedding)
        return parts

    def null_condition(self, context_embedding=None):
        """The unconditional input: the "no class" index, or the embedding of the zero context."""
        if not self.is_context:
            return self.num_classes
        return context_embedding(torch.zeros((1, self.num_classes), device=self.accelerator.device))

    def training_labels(self, batch: MicroBatch) -> torch.Tensor:
        """This batch's labels, each dropped to "no label" with probability p (from its generator)."""
        labels = batch.labels
        if self.model_args.condition_dropout > 0:
            drop = torch.rand(labels.shape[:1], generator=batch.generator, device=labels.device)
            keep = drop >= self.model_args.condition_dropout
            labels = labels * keep[:, None] if self.is_context else torch.where(keep, labels, self.num_classes)
        return labels

    def denoiser(self, network, labels=None):
        """(x_t, t) -> prediction for these labels (class indices or context vectors)."""
        if self.is_context:
            labels = self.context_embedding(labels)
        return super().denoiser(lambda x, t: network(x, t, class_labels=labels))

    def averaged_context_embedding(self):
        """The context embedding to sample and export: its EMA if kept (a copy, eval mode)."""
        from pipelines.pipeline_conditional import ContextEmbedding

        trained = self.accelerator.unwrap_model(self.context_embedding)
        copy = ContextEmbedding(**trained.config)
        copy.load_state_dict(trained.state_dict())
        if self.ema is not None:
            unet_count = len(list(self.unet.parameters()))
            for parameter, average in zip(copy.parameters(), self.ema.shadow_params[unet_count:]):
                parameter.data.copy_(average)
        return copy.to(self.accelerator.device).eval()

    def grid_conditions(self, num_images: int, context_embedding) -> torch.Tensor:
        """One row per class (or per single context label): max(1, num_images // K) samples each."""
        per_class = max(1, num_images // self.num_classes)
        labels = torch.arange(self.num_classes, device=self.accelerator.device).repeat_interleave(per_class)
        if not self.is_context:
            return labels
        return context_embedding(torch.nn.functional.one_hot(labels, self.num_classes).float())

    @torch.no_grad()
    def sample_grids(self, num_images: int, seed: int) -> dict:
        from pipelines.pipeline_conditional import guided_noise_prediction
        from smallgen.sampling import sample_images

        model = self.averaged_unet()
        context = self.averaged_context_embedding() if self.is_context else None
        conditions, null = self.grid_conditions(num_images, context), self.null_condition(context)
        scale = self.model_args.guidance_scale

        def predict_for(start, end):
            return lambda x, t: guided_noise_prediction(model, x, t, conditions[start:end], null, scale)

        per_class = len(conditions) // self.num_classes
        return {name: (sample_images(model, sampler, len(conditions), steps, seed=seed, eta=eta,
                                     batch_size=self.train_args.eval_batch_size, predict_for=predict_for), per_class)
                for name, (sampler, steps, eta) in make_samplers(self.model_args).items()}

    def export(self, output_dir: str) -> ModelCardText:
        from diffusers import DDPMScheduler

        import pipelines
        from pipelines import ClassConditionalPipeline
        from smallgen.export import save_custom_pipeline

        config = scheduler_config(self.model_args)
        context = self.averaged_context_embedding().to("cpu") if self.is_context else None
        pipeline = ClassConditionalPipeline(unet=self.averaged_unet().to("cpu"), scheduler=DDPMScheduler(**config),
                                            context_embedding=context, class_names=self.class_names)
        pipeline_file = f"{pipelines.__path__[0]}/pipeline_conditional.py"
        save_custom_pipeline(pipeline, "pipeline_conditional", output_dir,
                             {"context_embedding": (pipeline_file, "ContextEmbedding")} if context else None)
        m = self.model_args
        kind = "context vectors" if self.is_context else "classes"
        return ModelCardText(
            description=(f"A DDPM conditioned on {len(self.class_names)} {kind} ({', '.join(self.class_names)}; "
                         f"{m.ddpm_beta_schedule} schedule, T = {m.ddpm_num_steps}) trained with classifier-free "
                         f"guidance (label dropout {m.condition_dropout}) by smallgen's `train_unconditional.py`. "
                         "Sample with `pipeline(class_labels=[0, 3], guidance_scale=2.0)`."),
            tags=["ddpm", "class-conditional", "classifier-free-guidance"],
            arguments={k: v for k, v in config.items() if k != "trained_betas"},
            trust_remote_code=True,
        )
