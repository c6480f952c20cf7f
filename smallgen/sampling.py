"""The sampling loop: x_T ~ N(0, I), then the scheduler's steps; runs on our samplers or diffusers'."""

from __future__ import annotations

import torch


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats to uint8 exactly as a saved PNG holds them (round, clamp)."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def sample_images(unet, scheduler, num_images: int, num_inference_steps: int, seed: int = 0,
                  batch_size: int = 64, device=None, eta: float | None = None, channels_last: bool = False,
                  progress: bool = False) -> torch.Tensor:
    """``num_images`` samples as uint8 (N, C, H, W) on the CPU; the same seed gives the same images.

    ``scheduler`` is any object with diffusers' call shape (``set_timesteps``, ``timesteps``,
    ``step``): ``models.schedulers.DDPMSampler``/``DDIMSampler`` or diffusers' own. ``eta`` is
    passed to DDIM-style steps.
    """
    from tqdm.auto import tqdm

    device = torch.device(device or next(unet.parameters()).device)
    config = unet.config
    shape = (config.in_channels, config.sample_size, config.sample_size)
    generator = torch.Generator(device).manual_seed(seed)
    step_kwargs = {} if eta is None else {"eta": eta}
    dtype = next(unet.parameters()).dtype
    out = []
    for start in range(0, num_images, batch_size):
        n = min(batch_size, num_images - start)
        x = torch.randn((n, *shape), generator=generator, device=device, dtype=torch.float32)
        scheduler.set_timesteps(num_inference_steps)  # per batch: multistep solvers keep state
        for t in tqdm(scheduler.timesteps, desc="sampling", leave=False, disable=not progress):
            model_input = x.to(dtype)
            if channels_last:
                model_input = model_input.contiguous(memory_format=torch.channels_last)
            model_output = unet(model_input, t.to(device)).sample.float()
            x = scheduler.step(model_output, t, x, generator=generator, **step_kwargs).prev_sample
        out.append(to_uint8(x).cpu())
    return torch.cat(out)
