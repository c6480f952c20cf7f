"""VAEPipeline and GANPipeline: the baselines' images from latents z ~ N(0, I).

Self-contained (torch, numpy, diffusers only): exported folders carry a copy of this file so that
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` needs no smallgen install.
"""

from __future__ import annotations

import contextlib
import importlib
import os

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor


def _postprocess(pipeline, images: torch.Tensor, output_type: str, return_dict: bool):
    images = (images.float() / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
    if output_type == "pil":
        images = pipeline.numpy_to_pil(images)
    elif output_type == "pt":
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if not return_dict:
        return (images,)
    return ImagePipelineOutput(images=images)


def _local_folder(name_or_path: str, kwargs: dict) -> str:
    if os.path.isdir(name_or_path):
        return name_or_path
    from huggingface_hub import snapshot_download

    return snapshot_download(name_or_path, revision=kwargs.get("revision"), token=kwargs.get("token"),
                             cache_dir=kwargs.get("cache_dir"))


def _load_component(folder: str, subfolder: str, class_name: str):
    # Our own installed classes, not the copies in the folder (those are for trust_remote_code users).
    # importlib rather than an import statement: this file must load where models/ is absent.
    module = importlib.import_module("models.baselines")
    return getattr(module, class_name).from_pretrained(folder, subfolder=subfolder)


@contextlib.contextmanager
def _batch_statistics(network: torch.nn.Module):
    """BatchNorm normalises with each batch's own statistics (as PyTorch's DCGAN example samples) and
    leaves the running statistics untouched."""
    norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in norms]
    for m in norms:
        m.train()
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, (training, tracking) in zip(norms, saved):
            m.train(training)
            m.track_running_stats = tracking


class GANPipeline(DiffusionPipeline):
    """Unconditional images from ``decoder``: z ~ N(0, I) of size ``decoder.config.latent_dim``."""

    def __init__(self, decoder):
        super().__init__()
        self.register_modules(decoder=decoder)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        if cls is not GANPipeline:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        folder = _local_folder(str(pretrained_model_name_or_path), kwargs)
        return cls(decoder=_load_component(folder, "decoder", "ConvDecoder"))

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, generator: torch.Generator | list | None = None,
                 output_type: str = "pil", return_dict: bool = True, batchnorm: str = "eval", **kwargs):
        """``batch_size`` images; ``output_type`` "pil", "np" (floats in [0, 1]) or "pt". ``batchnorm``:
        "eval" uses the running statistics (each image depends on its latent only), "train" the
        batch's own statistics (images depend on the whole batch)."""
        if batchnorm not in ("eval", "train"):
            raise ValueError(f"batchnorm must be 'eval' or 'train'; got {batchnorm!r}")
        config = self.decoder.config
        latents = randn_tensor((batch_size, config.latent_dim), generator=generator, device=self.device,
                               dtype=self.decoder.dtype)
        with _batch_statistics(self.decoder) if batchnorm == "train" else contextlib.nullcontext():
            images = self.decoder(latents)
        return _postprocess(self, images, output_type, return_dict)


class VAEPipeline(DiffusionPipeline):
    """Unconditional images from a VAE's decoder; ``vae.encode`` stays available for reconstructions."""

    def __init__(self, vae):
        super().__init__()
        self.register_modules(vae=vae)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        if cls is not VAEPipeline:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        folder = _local_folder(str(pretrained_model_name_or_path), kwargs)
        return cls(vae=_load_component(folder, "vae", "ConvVAE"))

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, generator: torch.Generator | list | None = None,
                 output_type: str = "pil", return_dict: bool = True, **kwargs):
        """``batch_size`` images; ``output_type`` "pil", "np" (floats in [0, 1]) or "pt"."""
        latents = randn_tensor((batch_size, self.vae.config.latent_dim), generator=generator, device=self.device,
                               dtype=self.vae.dtype)
        return _postprocess(self, self.vae.decode(latents), output_type, return_dict)
