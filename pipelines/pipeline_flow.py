"""Unconditional sampling of a flow-matching UNet (``--model_type flow``).

Self-contained (torch and diffusers only): this file is copied into exported folders, so
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` works without smallgen.
The UNet is diffusers' own UNet2DModel, trained to predict the velocity n - x of the straight
path x_t = (1 - t) x + t n at timestep 1000 t; the scheduler is diffusers'
FlowMatchEulerDiscreteScheduler (FlowMatchHeunDiscreteScheduler swaps in), which integrates
dx/dt = v from t = 1 to 0.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor


class FlowMatchPipeline(DiffusionPipeline):
    """``pipe(batch_size=16, num_inference_steps=20, generator=...)``; any flow-matching scheduler swaps in."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """This class, installed, loads a folder (or Hub id) it exported without running the folder's
        copy of this file (diffusers' loader always would). DiffusionPipeline.from_pretrained is unchanged."""
        if cls is not FlowMatchPipeline:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        import json
        import os
        from importlib import import_module

        known = {"unet", "scheduler", "torch_dtype", "variant", "revision", "token", "cache_dir"}
        if set(kwargs) - known:
            raise TypeError(f"from_pretrained() got unexpected keyword arguments {sorted(set(kwargs) - known)}")
        folder = str(pretrained_model_name_or_path)
        if not os.path.isdir(folder):
            from huggingface_hub import snapshot_download

            folder = snapshot_download(folder, revision=kwargs.get("revision"), token=kwargs.get("token"),
                                       cache_dir=kwargs.get("cache_dir"))
        with open(os.path.join(folder, "model_index.json")) as handle:
            index = json.load(handle)
        components = {}
        for name in ("unet", "scheduler"):
            if name in kwargs:
                components[name] = kwargs[name]
                continue
            library, class_name = index[name]
            options = {k: kwargs[k] for k in ("torch_dtype", "variant") if k in kwargs and name == "unet"}
            components[name] = getattr(import_module(library), class_name).from_pretrained(
                folder, subfolder=name, **options)
        return cls(**components)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, generator=None, num_inference_steps: int = 20,
                 output_type: str = "pil", return_dict: bool = True):
        """``batch_size`` images; ``output_type`` "pil", "np" (floats in [0, 1]) or "pt"."""
        config = self.unet.config
        size = config.sample_size if isinstance(config.sample_size, (tuple, list)) else (config.sample_size,) * 2
        sample = randn_tensor((batch_size, config.in_channels, *size), generator=generator, device=self.device,
                              dtype=torch.float32)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for t in self.progress_bar(self.scheduler.timesteps):
            velocity = self.unet(sample.to(self.unet.dtype), t).sample.float()
            sample = self.scheduler.step(velocity, t, sample).prev_sample.float()
        images = (sample / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            result = images
        else:
            result = images.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                result = self.numpy_to_pil(result)
        if not return_dict:
            return (result,)
        return ImagePipelineOutput(images=result)
