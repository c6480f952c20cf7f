"""Class-conditional DDPM/DDIM sampling with classifier-free guidance (Ho & Salimans 2022).

Self-contained (torch and diffusers only): this file is copied into exported folders, so
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` works without smallgen.
The UNet is diffusers' own UNet2DModel. Classes: its class embedding has ``num_class_embeds``
entries, the last of which is "no class" (the label a trained image lost with probability
``condition_dropout``). Context vectors (several 0/1 labels per image): a ``ContextEmbedding``
(a learned linear map) turns the vector into the UNet's class embedding (``class_embed_type``
"identity"); "no context" is the zero vector. Any diffusers scheduler can be swapped in.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.utils.torch_utils import randn_tensor


class ContextEmbedding(ModelMixin, ConfigMixin):
    """A learned linear map of a 0/1 context vector to the UNet's time-embedding width."""

    @register_to_config
    def __init__(self, context_dim: int = 5, embedding_dim: int = 128):
        super().__init__()
        self.linear = torch.nn.Linear(context_dim, embedding_dim)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.linear(context.to(self.linear.weight.dtype))


def guided_noise_prediction(unet, sample: torch.Tensor, timestep, class_labels: torch.Tensor | None,
                            null_label, guidance_scale: float) -> torch.Tensor:
    """eps = eps_uncond + w (eps_cond - eps_uncond), conditional and unconditional in one UNet call.

    ``class_labels`` are class indices (``null_label`` an int: the "no class" index) or context
    embeddings (``null_label`` the embedding of no context). ``guidance_scale`` 1 is the conditional
    model exactly and 0 the unconditional one exactly (one call each); ``class_labels`` None samples
    unconditionally.
    """
    batch = sample.shape[0]
    if isinstance(null_label, torch.Tensor):
        null = null_label.expand(batch, -1)
    else:
        null = torch.full((batch,), null_label, dtype=torch.long, device=sample.device)
    if class_labels is None or guidance_scale == 0:
        return unet(sample, timestep, class_labels=null).sample
    if guidance_scale == 1:
        return unet(sample, timestep, class_labels=class_labels).sample
    both = unet(torch.cat([sample, sample]), timestep, class_labels=torch.cat([class_labels, null])).sample
    conditional, unconditional = both.chunk(2)
    return unconditional + guidance_scale * (conditional - unconditional)


class ClassConditionalPipeline(DiffusionPipeline):
    """``pipe(class_labels=[3, 3, 5], guidance_scale=2.0, num_inference_steps=50, generator=...)``.

    Labels are class indices or names (``pipe.class_names``); ``class_labels=None`` draws
    ``batch_size`` unconditional samples. A context model also takes ``context=[[1, 0, 0, 0, 1]]``.
    """

    _optional_components = ["context_embedding"]

    def __init__(self, unet, scheduler, context_embedding=None, class_names: list[str] | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, context_embedding=context_embedding)
        self.register_to_config(class_names=list(class_names) if class_names else None)  # in model_index.json

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """This class, installed, loads a folder (or Hub id) it exported without trust_remote_code: the
        UNet and scheduler are diffusers' own; the folder's copy of this file is for other machines."""
        if cls is not ClassConditionalPipeline:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        import json
        import os

        import diffusers

        folder = str(pretrained_model_name_or_path)
        if not os.path.isdir(folder):
            from huggingface_hub import snapshot_download

            folder = snapshot_download(folder, revision=kwargs.get("revision"), token=kwargs.get("token"),
                                       cache_dir=kwargs.get("cache_dir"))
        with open(os.path.join(folder, "model_index.json")) as handle:
            index = json.load(handle)
        unet = diffusers.UNet2DModel.from_pretrained(folder, subfolder="unet")
        scheduler = getattr(diffusers, index["scheduler"][1]).from_pretrained(folder, subfolder="scheduler")
        context = None
        if (index.get("context_embedding") or [None])[0] is not None:
            context = ContextEmbedding.from_pretrained(folder, subfolder="context_embedding")
        return cls(unet=unet, scheduler=scheduler, context_embedding=context, class_names=index.get("class_names"))

    @property
    def null_label(self):
        """The unconditional input: the "no class" index, or the embedding of the zero context."""
        if self.context_embedding is None:
            return self.unet.config.num_class_embeds - 1
        zeros = torch.zeros((1, self.context_embedding.config.context_dim), device=self.device)
        return self.context_embedding(zeros)

    @property
    def class_names(self) -> list[str]:
        names = self.config.class_names
        if names:
            return list(names)
        count = (self.context_embedding.config.context_dim if self.context_embedding is not None
                 else self.unet.config.num_class_embeds - 1)
        return [str(i) for i in range(count)]

    def conditioning(self, class_labels, context) -> torch.Tensor | None:
        """What the UNet's class embedding takes: class indices, or embedded context vectors (a class
        label given to a context model is its one-hot vector)."""
        if self.context_embedding is None:
            if context is not None:
                raise ValueError("this pipeline conditions on classes: pass class_labels, not context")
            return None if class_labels is None else self.label_indices(class_labels)
        if context is None and class_labels is not None:
            context = torch.nn.functional.one_hot(self.label_indices(class_labels), len(self.class_names))
        if context is None:
            return None
        vectors = torch.as_tensor(np.asarray(context, dtype=np.float32), device=self.device)
        if vectors.ndim != 2 or vectors.shape[1] != len(self.class_names):
            raise ValueError(f"context must be rows of {len(self.class_names)} values ({', '.join(self.class_names)})")
        return self.context_embedding(vectors)

    def label_indices(self, class_labels) -> torch.Tensor:
        """Names or indices -> a LongTensor on the pipeline's device; ValueError names a bad one."""
        names = self.class_names
        indices = []
        for label in class_labels:
            if isinstance(label, str):
                if label not in names:
                    raise ValueError(f"unknown class {label!r}; the classes are {', '.join(names)}")
                indices.append(names.index(label))
            elif isinstance(label, (int, np.integer)) and 0 <= int(label) < len(names):
                indices.append(int(label))
            else:
                raise ValueError(f"class label {label!r} is not a class index 0 ... {len(names) - 1} or a name")
        return torch.tensor(indices, dtype=torch.long, device=self.device)

    @torch.no_grad()
    def __call__(self, class_labels=None, batch_size: int = 1, guidance_scale: float = 2.0,
                 num_inference_steps: int = 50, generator=None, eta: float = 0.0, output_type: str = "pil",
                 return_dict: bool = True, context=None):
        labels = self.conditioning(class_labels, context)
        batch = batch_size if labels is None else len(labels)
        config = self.unet.config
        sample = randn_tensor((batch, config.in_channels, config.sample_size, config.sample_size),
                              generator=generator, device=self.device, dtype=self.unet.dtype)
        sample = sample * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps)
        extra = {"eta": eta} if "eta" in inspect.signature(self.scheduler.step).parameters else {}
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(sample, t)
            noise = guided_noise_prediction(self.unet, model_input, t, labels, self.null_label, guidance_scale)
            sample = self.scheduler.step(noise, t, sample, generator=generator, **extra).prev_sample
        images = (sample / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            result = images
        else:
            result = images.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                result = self.numpy_to_pil(result)
        if not return_dict:
            return (result,)
        return ImagePipelineOutput(images=result)
