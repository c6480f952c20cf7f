"""Class-conditional DDPM/DDIM sampling with classifier-free guidance (Ho & Salimans 2022).

Self-contained (torch and diffusers only): saved folders carry this file, so
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` works without smallgen.
The UNet is diffusers' own UNet2DModel with an "identity" class embedding: it takes the vector a
``LabelEmbedding`` makes of a label. The ``LabelEmbedding`` holds everything about the labels: their
names (in its config) and their learned embedding, either one vector per class plus one for "no
class", or a linear map of a 0/1 context vector (several labels per image; "no context" is the
zero vector). Any diffusers scheduler can be swapped in.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin, SchedulerMixin, UNet2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.utils.torch_utils import randn_tensor

from .portable_pipeline import PortablePipeline


class LabelEmbedding(ModelMixin, ConfigMixin):
    """Labels -> the vector the UNet's class embedding adds to its time embedding.

    ``multi_label`` False: labels are class indices 0 ... K - 1, and K means "no class". True: labels
    are rows of K values in {0, 1} (a context vector), and the zero row means "no context".
    """

    @register_to_config
    def __init__(self, class_names: list[str], embedding_dim: int = 128, multi_label: bool = False):
        super().__init__()
        if multi_label:
            self.linear = torch.nn.Linear(len(class_names), embedding_dim)
        else:
            self.embedding = torch.nn.Embedding(len(class_names) + 1, embedding_dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.config.multi_label:
            return self.linear(labels.to(self.linear.weight.dtype))
        return self.embedding(labels)

    def no_label(self, batch_size: int, device=None) -> torch.Tensor:
        """The input meaning "no label", ``batch_size`` times (what label dropout trained)."""
        count = len(self.config.class_names)
        if self.config.multi_label:
            return torch.zeros((batch_size, count), device=device)
        return torch.full((batch_size,), count, dtype=torch.long, device=device)


def guided_prediction(unet, sample: torch.Tensor, timestep, condition: torch.Tensor | None,
                      unconditional: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """eps = eps_uncond + w (eps_cond - eps_uncond), both halves in one UNet call.

    ``condition`` and ``unconditional`` are label embeddings, one row per image. ``guidance_scale`` 1 is
    the conditional model exactly and 0 the unconditional one exactly (one call each); ``condition``
    None samples unconditionally.
    """
    if condition is None or guidance_scale == 0:
        return unet(sample, timestep, class_labels=unconditional).sample
    if guidance_scale == 1:
        return unet(sample, timestep, class_labels=condition).sample
    both = unet(torch.cat([sample, sample]), timestep, class_labels=torch.cat([condition, unconditional])).sample
    conditional, unconditional_prediction = both.chunk(2)
    return unconditional_prediction + guidance_scale * (conditional - unconditional_prediction)


def _flattened(labels) -> list:
    """One label, a list of labels, or lists of them (``[[1], [1]]``, as diffusers' batch tests build) -> a list."""
    if isinstance(labels, (torch.Tensor, np.ndarray)):
        labels = labels.tolist()
    if not isinstance(labels, (list, tuple)):
        return [labels]
    return [one for label in labels for one in _flattened(label)]


class ClassConditionalPipeline(PortablePipeline):
    """``pipe(class_labels=[3, 3, 5], guidance_scale=2.0, num_inference_steps=50, generator=...)``.

    Labels are class indices or names (``pipe.class_names``); ``class_labels=None`` draws
    ``batch_size`` unconditional samples. A context model also takes ``context=[[1, 0, 0, 0, 1]]`` (one row alone is one image's).
    """

    model_cpu_offload_seq = "label_embedding->unet"

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, label_embedding: LabelEmbedding):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, label_embedding=label_embedding)

    @property
    def class_names(self) -> list[str]:
        return list(self.label_embedding.config.class_names)

    def label_inputs(self, class_labels, context, device) -> torch.Tensor | None:
        """What the label embedding takes: class indices, or context rows (a class label given to a
        context model is its one-hot row); None: no labels."""
        multi_label = self.label_embedding.config.multi_label
        if context is not None and not multi_label:
            raise ValueError("this pipeline conditions on classes: pass class_labels, not context")
        if context is None:
            if class_labels is None:
                return None
            indices = self.label_indices(class_labels).to(device)
            return torch.nn.functional.one_hot(indices, len(self.class_names)) if multi_label else indices
        rows = torch.as_tensor(np.atleast_2d(np.asarray(context, dtype=np.float32)), device=device)  # one row: one image
        if rows.ndim != 2 or rows.shape[1] != len(self.class_names):
            raise ValueError(f"context must be rows of {len(self.class_names)} values ({', '.join(self.class_names)})")
        return rows

    def label_indices(self, class_labels) -> torch.Tensor:
        """Names or indices -> a LongTensor; ValueError names a bad one. As DiTPipeline takes them: one label
        (an int or a name) or a list, nested lists flattened."""
        names = self.class_names
        indices = []
        for label in _flattened(class_labels):
            if isinstance(label, str):
                if label not in names:
                    raise ValueError(f"unknown class {label!r}; the classes are {', '.join(names)}")
                indices.append(names.index(label))
            elif isinstance(label, (int, np.integer)) and 0 <= int(label) < len(names):
                indices.append(int(label))
            else:
                raise ValueError(f"class label {label!r} is not a class index 0 ... {len(names) - 1} or a name")
        if not indices:
            raise ValueError("class_labels holds no label: pass at least one, or None for unconditional images")
        return torch.tensor(indices, dtype=torch.long)

    @torch.no_grad()
    def __call__(self, class_labels: list | None = None, batch_size: int = 1, guidance_scale: float = 2.0,
                 num_inference_steps: int = 50, generator: torch.Generator | list[torch.Generator] | None = None,
                 eta: float = 0.0, output_type: str = "pil", return_dict: bool = True, context=None):
        """One image per label (or ``batch_size`` unconditional ones; one per generator of a list);
        ``eta`` is passed to schedulers that take it (DDIM); ``output_type`` "pil", "np" (floats in
        [0, 1]) or "pt". Sampling runs in float32 whatever the networks' dtype."""
        device = self._execution_device
        labels = self.label_inputs(class_labels, context, device)
        batch = batch_size if labels is None else len(labels)
        self.check_inputs(batch, generator, num_inference_steps, guidance_scale)
        condition = None if labels is None else self.label_embedding(labels)
        unconditional = self.label_embedding(self.label_embedding.no_label(batch, device))
        sample = randn_tensor(self.image_shape(batch, self.unet.config), generator=generator, device=device,
                              dtype=torch.float32)
        sample = sample * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        options = self.step_options(generator, eta=eta)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(sample, t).to(self.unet.dtype)
            noise = guided_prediction(self.unet, model_input, t, condition, unconditional, guidance_scale).float()
            sample = self.scheduler.step(noise, t, sample, **options).prev_sample
        return self.output(sample, output_type, return_dict)
