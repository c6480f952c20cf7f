"""VAEPipeline and GANPipeline: the baselines' images from latents z ~ N(0, I).

Self-contained (torch and diffusers only): saved folders carry this file and, in the component's
folder, the network's code (``models/baselines.py``), so ``DiffusionPipeline.from_pretrained(folder,
trust_remote_code=True)`` needs no smallgen install.
"""

from __future__ import annotations

import contextlib

import torch
from diffusers import ModelMixin
from diffusers.utils.torch_utils import randn_tensor

from .portable_pipeline import PortablePipeline


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


class GANPipeline(PortablePipeline):
    """Unconditional images from ``decoder``: z ~ N(0, I) of size ``decoder.config.latent_dim``."""

    model_cpu_offload_seq = "decoder"
    _installed_component_modules = ("models.baselines",)

    def __init__(self, decoder: ModelMixin):
        super().__init__()
        self.register_modules(decoder=decoder)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, generator: torch.Generator | list[torch.Generator] | None = None,
                 output_type: str = "pil", return_dict: bool = True, batchnorm: str = "eval"):
        """``batch_size`` images (one per generator of a list); ``output_type`` "pil", "np" (floats in
        [0, 1]) or "pt". ``batchnorm``: "eval" uses the running statistics (each image depends on its
        latent only), "train" the batch's own statistics (images depend on the whole batch)."""
        if batchnorm not in ("eval", "train"):
            raise ValueError(f"batchnorm must be 'eval' or 'train'; got {batchnorm!r}")
        self.check_inputs(batch_size, generator)
        latents = randn_tensor((batch_size, self.decoder.config.latent_dim), generator=generator,
                               device=self._execution_device, dtype=self.decoder.dtype)
        with _batch_statistics(self.decoder) if batchnorm == "train" else contextlib.nullcontext():
            images = self.decoder(latents)
        return self.output(images, output_type, return_dict)


class VAEPipeline(PortablePipeline):
    """Unconditional images from a VAE's decoder; ``vae.encode`` stays available for reconstructions."""

    model_cpu_offload_seq = "vae"
    _installed_component_modules = ("models.baselines",)

    def __init__(self, vae: ModelMixin):
        super().__init__()
        self.register_modules(vae=vae)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, generator: torch.Generator | list[torch.Generator] | None = None,
                 output_type: str = "pil", return_dict: bool = True):
        """``batch_size`` images (one per generator of a list); ``output_type`` "pil", "np" (floats in
        [0, 1]) or "pt"."""
        self.check_inputs(batch_size, generator)
        latents = randn_tensor((batch_size, self.vae.config.latent_dim), generator=generator,
                               device=self._execution_device, dtype=self.vae.dtype)
        return self.output(self.vae.decode(latents), output_type, return_dict)
