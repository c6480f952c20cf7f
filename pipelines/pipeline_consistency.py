"""Few-step sampling of a consistency model (Song et al. 2023) with diffusers' CMStochasticIterativeScheduler.

Self-contained (torch and diffusers only): saved folders carry this file, so
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` works without smallgen.
The UNet is diffusers' own UNet2DModel, trained as F in f(x; sigma) = c_skip x + c_out F(c_in x,
ln(sigma) / 4) with the boundary c_skip, c_out that the scheduler's ``step`` applies (f(x, sigma_min)
= x). The one difference from diffusers' ConsistencyModelPipeline is the noise condition: that
pipeline gives the UNet the scheduler's timestep 250 ln(sigma); ours gives it ln(sigma) / 4, EDM's
c_noise, so a finished EDM network can be tuned into a consistency model (smallgen's
``--model_type consistency --init_from``).
"""

from __future__ import annotations

import torch
from diffusers import CMStochasticIterativeScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from .portable_pipeline import PortablePipeline

TIMESTEP_PER_NOISE_CONDITION = 1000  # the scheduler's timestep is 1000 x (ln(sigma) / 4)


class ConsistencyPipeline(PortablePipeline):
    """``pipe(batch_size=16, num_inference_steps=2, generator=...)``: 1 step is one network call an image.
    ``timesteps`` picks the levels instead: indices i of the scheduler's Karras discretisation (sigma_max at
    0, sigma_min at num_train_timesteps - 1) in descending order, as diffusers' ConsistencyModelPipeline
    takes them (e.g. [22, 0] with N = 40)."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: CMStochasticIterativeScheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, generator: torch.Generator | list[torch.Generator] | None = None,
                 num_inference_steps: int = 1, timesteps: list[int] | None = None, output_type: str = "pil",
                 return_dict: bool = True):
        """``batch_size`` images (one per generator of a list); ``output_type`` "pil", "np" (floats in
        [0, 1]) or "pt". Sampling runs in float32 whatever the UNet's dtype."""
        self.check_inputs(batch_size, generator, num_inference_steps if timesteps is None else None)
        device = self._execution_device
        sample = randn_tensor(self.image_shape(batch_size, self.unet.config), generator=generator, device=device,
                              dtype=torch.float32)
        if timesteps is not None:
            self.scheduler.set_timesteps(timesteps=timesteps, device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        sample = sample * self.scheduler.init_noise_sigma
        options = self.step_options(generator)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(sample, t).to(self.unet.dtype)
            noise_condition = (t / TIMESTEP_PER_NOISE_CONDITION).float()
            prediction = self.unet(model_input, noise_condition).sample.float()
            sample = self.scheduler.step(prediction, t, sample, **options).prev_sample
        return self.output(sample, output_type, return_dict)
