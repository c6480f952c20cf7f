"""Unconditional sampling of an EDM-preconditioned UNet (Karras et al. 2022).

Self-contained (torch and diffusers only): saved folders carry this file, so
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` works without smallgen.
The UNet is diffusers' own UNet2DModel, trained as F in D(x; sigma) = c_skip x + c_out F(c_in x,
ln(sigma) / 4); the scheduler is diffusers' EDMEulerScheduler (or EDMDPMSolverMultistepScheduler,
or our ``EDMHeunScheduler`` or ``EDMUniPCScheduler``), which applies c_in through ``scale_model_input`` and c_skip, c_out
in ``step``. DDPMPipeline cannot sample it: it never scales the model input.
"""

from __future__ import annotations

import torch
from diffusers import SchedulerMixin, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from .portable_pipeline import PortablePipeline


class EDMPipeline(PortablePipeline):
    """``pipe(batch_size=16, num_inference_steps=18, generator=...)``; any EDM scheduler swaps in."""

    model_cpu_offload_seq = "unet"
    _installed_component_modules = ("pipelines.scheduling_edm_heun", "pipelines.scheduling_edm_unipc")

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, generator: torch.Generator | list[torch.Generator] | None = None,
                 num_inference_steps: int = 18, output_type: str = "pil", return_dict: bool = True):
        """``batch_size`` images (one per generator of a list); ``output_type`` "pil", "np" (floats in
        [0, 1]) or "pt". Sampling runs in float32 whatever the UNet's dtype."""
        self.check_inputs(batch_size, generator, num_inference_steps)
        device = self._execution_device
        sample = randn_tensor(self.image_shape(batch_size, self.unet.config), generator=generator, device=device,
                              dtype=torch.float32)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        sample = sample * self.scheduler.init_noise_sigma
        options = self.step_options(generator)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(sample, t).to(self.unet.dtype)
            prediction = self.unet(model_input, t).sample.float()
            sample = self.scheduler.step(prediction, t, sample, **options).prev_sample
        return self.output(sample, output_type, return_dict)
