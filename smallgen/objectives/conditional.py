"""``--model_type ddpm --class_conditional``: a UNet2DModel with a class embedding, trained for
classifier-free guidance (Ho & Salimans 2022) and exported as ClassConditionalPipeline.

The class embedding is diffusers' own (``num_class_embeds`` = classes + 1, the last entry meaning
"no class"), so the exported UNet is a plain diffusers model. Each training image loses its label
with probability ``--condition_dropout``, drawn from the micro-batch's seeded generator so exact
resume still holds.
"""

from __future__ import annotations

import torch

from smallgen.errors import ConfigError
from smallgen.objectives.base import MicroBatch, ModelCardText
from smallgen.objectives.diffusion import DiffusionObjective, make_samplers, scheduler_config


class ClassConditionalObjective(DiffusionObjective):
    name = "ddpm-class-conditional"
    needs_labels = True

    def __init__(self, data_args, model_args, train_args, labels):
        if labels is None:
            raise ConfigError("--class_conditional needs the training labels (--label_column)")
        if labels.is_context:
            raise ConfigError("--label_column holds multi-hot context vectors; --class_conditional takes class "
                              "indices (a learned context embedding for vectors is not implemented yet)")
        self.num_classes = labels.size
        self.class_names = labels.names or [str(i) for i in range(self.num_classes)]
        super().__init__(data_args, model_args, train_args)

    def make_unet(self):
        from models.unet import create_unet

        return create_unet(self.model_args.model_config_name_or_path, self.data_args.resolution,
                           num_class_embeds=self.num_classes + 1)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def denoiser(self, network, batch: MicroBatch | None = None, training: bool = True):
        """(x_t, t) -> prediction for this batch's labels, each dropped to "no class" with probability p."""
        labels = batch.labels
        if training and self.model_args.condition_dropout > 0:
            drop = torch.rand(labels.shape, generator=batch.generator, device=labels.device)
            labels = torch.where(drop < self.model_args.condition_dropout, self.null_label, labels)
        return super().denoiser(lambda x, t: network(x, t, class_labels=labels))

    def grid_labels(self, num_images: int) -> torch.Tensor:
        """One row per class: max(1, num_images // classes) samples of each."""
        per_class = max(1, num_images // self.num_classes)
        return torch.arange(self.num_classes).repeat_interleave(per_class)

    @torch.no_grad()
    def sample_grids(self, num_images: int, seed: int) -> dict:
        from pipelines.pipeline_conditional import guided_noise_prediction
        from smallgen.sampling import sample_images

        model = self.averaged_unet()
        labels = self.grid_labels(num_images).to(self.accelerator.device)
        scale = self.model_args.guidance_scale

        def predict_for(start, end):
            return lambda x, t: guided_noise_prediction(model, x, t, labels[start:end], self.null_label, scale)

        per_class = len(labels) // self.num_classes
        return {name: (sample_images(model, sampler, len(labels), steps, seed=seed, eta=eta,
                                     batch_size=self.train_args.eval_batch_size, predict_for=predict_for), per_class)
                for name, (sampler, steps, eta) in make_samplers(self.model_args).items()}

    def export(self, output_dir: str) -> ModelCardText:
        from diffusers import DDPMScheduler

        from pipelines import ClassConditionalPipeline
        from smallgen.export import save_custom_pipeline

        config = scheduler_config(self.model_args)
        pipeline = ClassConditionalPipeline(unet=self.averaged_unet().to("cpu"), scheduler=DDPMScheduler(**config),
                                            class_names=self.class_names)
        save_custom_pipeline(pipeline, "pipeline_conditional", output_dir)
        m = self.model_args
        return ModelCardText(
            description=(f"A class-conditional DDPM ({len(self.class_names)} classes: {', '.join(self.class_names)}; "
                         f"{m.ddpm_beta_schedule} schedule, T = {m.ddpm_num_steps}) trained with classifier-free "
                         f"guidance (label dropout {m.condition_dropout}) by smallgen's `train_unconditional.py`. "
                         "Sample a class with `pipeline(class_labels=[0, 3], guidance_scale=2.0)`."),
            tags=["ddpm", "class-conditional", "classifier-free-guidance"],
            arguments={k: v for k, v in config.items() if k != "trained_betas"},
            trust_remote_code=True,
        )
