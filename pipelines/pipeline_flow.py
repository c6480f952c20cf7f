"""Unconditional sampling of a flow-matching UNet (``--model_type flow``).

Self-contained (torch and diffusers only): saved folders carry this file, so
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` works without smallgen.
The UNet is diffusers' own UNet2DModel, trained to predict the velocity n - x of the straight
path x_t = (1 - t) x + t n at timestep 1000 t; the scheduler is diffusers'
FlowMatchEulerDiscreteScheduler (FlowMatchHeunDiscreteScheduler swaps in), which integrates
dx/dt = v from t = 1 to 0.
"""

from __future__ import annotations

import torch
from diffusers import SchedulerMixin, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from .portable_pipeline import PortablePipeline


class FlowMatchPipeline(PortablePipeline):
    """``pipe(batch_size=16, num_inference_steps=20, generator=...)``; any flow-matching scheduler swaps in."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, generator: torch.Generator | list[torch.Generator] | None = None,
                 num_inference_steps: int = 20, output_type: str = "pil", return_dict: bool = True):
        """``batch_size`` images (one per generator of a list); ``output_type`` "pil", "np" (floats in
        [0, 1]) or "pt". Integration runs in float32 whatever the UNet's dtype."""
        self.check_inputs(batch_size, generator, num_inference_steps)
        device = self._execution_device
        sample = randn_tensor(self.image_shape(batch_size, self.unet.config), generator=generator, device=device,
                              dtype=torch.float32)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        options = self.step_options(generator)
        for t in self.progress_bar(self.scheduler.timesteps):
            velocity = self.unet(sample.to(self.unet.dtype), t).sample.float()
            sample = self.scheduler.step(velocity, t, sample, **options).prev_sample.float()
        return self.output(sample, output_type, return_dict)
