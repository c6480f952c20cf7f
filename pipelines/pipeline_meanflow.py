"""One- or few-call sampling of a MeanFlow model (Geng et al. 2025, arXiv 2505.13447; ``--model_type meanflow``).

Self-contained (torch and diffusers only): saved folders carry this file, so
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` works without smallgen.
The UNet is diffusers' own UNet2DModel with ``class_embed_type="timestep"``: it predicts the average
velocity u(z_t, r, t) of the straight path x_t = (1 - t) x + t n over [r, t], given the timestep
``TIME_SCALE * t`` and, through its second (class) timestep embedding, ``TIME_SCALE * (t - r)``. A step
from t to r is z_r = z_t - (t - r) u, which is the Euler step of diffusers'
FlowMatchEulerDiscreteScheduler with u in place of the velocity; the times are the scheduler's sigmas,
evenly spaced from 1 to 0 (1 step: noise to image in one call).
"""

from __future__ import annotations

import contextlib

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from .portable_pipeline import PortablePipeline

# The UNet sees 10 t and 10 (t - r): at diffusers' flow scale (1000 t) the time embedding makes u so steep
# in t that du/dt, which the training target holds, is ~50x |u| at initialisation; at 10 it is ~1.3x.
TIME_SCALE = 10.0


@contextlib.contextmanager
def _inputs_cast_to_weights(module: torch.nn.Module):
    """diffusers' UNet gives its "timestep" class embedding the float32 output of its time projection (its own
    time path casts it, that one not): a UNet in any other dtype needs the cast."""
    dtype = next(module.parameters()).dtype
    hook = module.register_forward_pre_hook(lambda _, inputs: tuple(x.to(dtype) for x in inputs))
    try:
        yield
    finally:
        hook.remove()


class MeanFlowPipeline(PortablePipeline):
    """``pipe(batch_size=16, num_inference_steps=1, generator=...)``: each step is one network call an image."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: FlowMatchEulerDiscreteScheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def average_velocity(self, sample: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        """u(z_end, start, end) in float32, the UNet in its own dtype (float16, bfloat16, float64 too)."""
        batch, dtype = sample.shape[0], self.unet.dtype
        with _inputs_cast_to_weights(self.unet.class_embedding):
            return self.unet(sample.to(dtype), (end * TIME_SCALE).expand(batch),
                             class_labels=((end - start) * TIME_SCALE).expand(batch)).sample.float()

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, generator: torch.Generator | list[torch.Generator] | None = None,
                 num_inference_steps: int = 1, output_type: str = "pil", return_dict: bool = True):
        """``batch_size`` images (one per generator of a list); ``output_type`` "pil", "np" (floats in
        [0, 1]) or "pt". Sampling runs in float32 whatever the UNet's dtype."""
        self.check_inputs(batch_size, generator, num_inference_steps)
        device = self._execution_device
        sample = randn_tensor(self.image_shape(batch_size, self.unet.config), generator=generator, device=device,
                              dtype=torch.float32)
        self.scheduler.set_timesteps(sigmas=torch.linspace(1, 0, num_inference_steps + 1)[:-1].tolist(),
                                     device=device)
        times = self.scheduler.sigmas.to(device=device, dtype=torch.float32)
        options = self.step_options(generator)
        for i, timestep in enumerate(self.progress_bar(self.scheduler.timesteps)):
            average = self.average_velocity(sample, times[i + 1], times[i])
            sample = self.scheduler.step(average, timestep, sample, **options).prev_sample.float()
        return self.output(sample, output_type, return_dict)
