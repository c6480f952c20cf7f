"""Unconditional sampling of an EDM-preconditioned UNet (Karras et al. 2022).

Self-contained (torch and diffusers only): this file is copied into exported folders, so
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` works without smallgen.
The UNet is diffusers' own UNet2DModel, trained as F in D(x; sigma) = c_skip x + c_out F(c_in x,
ln(sigma) / 4); the scheduler is diffusers' EDMEulerScheduler (or EDMDPMSolverMultistepScheduler),
which applies c_in through ``scale_model_input`` and c_skip, c_out in ``step``. DDPMPipeline cannot
sample it: it never scales the model input.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor


class EDMPipeline(DiffusionPipeline):
    """``pipe(batch_size=16, num_inference_steps=18, generator=...)``; any EDM scheduler swaps in."""

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """This class, installed, loads a folder (or Hub id) it exported without trust_remote_code."""
        if cls is not EDMPipeline:
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
        return cls(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, generator=None, num_inference_steps: int = 18,
                 output_type: str = "pil", return_dict: bool = True, **kwargs):
        """``batch_size`` images; ``output_type`` "pil", "np" (floats in [0, 1]) or "pt"."""
        config = self.unet.config
        sample = randn_tensor((batch_size, config.in_channels, config.sample_size, config.sample_size),
                              generator=generator, device=self.device, dtype=torch.float32)
        self.scheduler.set_timesteps(num_inference_steps)
        sample = sample * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(sample, t).to(self.unet.dtype)
            prediction = self.unet(model_input, t.to(self.device)).sample.float()
            sample = self.scheduler.step(prediction, t, sample).prev_sample
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
