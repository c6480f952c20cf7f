"""The sampling loop: x_T ~ N(0, I), then the scheduler's steps; on our samplers or diffusers'.

``reverse_process`` is the one reverse loop: sample grids, ``evaluate_fid.py`` and the report's
strips all run through it. Every image has its own generator (``smallgen.seeding``), used for its
starting noise and for the noise a stochastic step adds, so image i depends only on (seed, i).
"""

from __future__ import annotations

import inspect

import torch

from smallgen.seeding import image_generators, per_image_randn


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats to uint8 exactly as a saved PNG holds them (round, clamp)."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def reverse_process(unet, scheduler, num_inference_steps: int, generators: list[torch.Generator],
                    eta: float | None = None, channels_last: bool = False, progress: bool = False, predict=None):
    """Yield (t, x_t, step output) for every step, from noise drawn by ``generators`` (one per image).

    ``scheduler`` is any object with diffusers' call shape (``set_timesteps``, ``timesteps``,
    ``step``); ``eta`` is passed to DDIM-style steps. The last output's ``prev_sample`` is x_0.
    ``predict(x, t)`` replaces ``unet(x, t).sample`` (e.g. classifier-free guidance).
    """
    from tqdm.auto import tqdm

    device = next(unet.parameters()).device
    config = unet.config
    dtype = next(unet.parameters()).dtype
    scheduler.set_timesteps(num_inference_steps)  # per call: multistep solvers keep state
    x = per_image_randn(generators, (config.in_channels, config.sample_size, config.sample_size), device)
    x = x * getattr(scheduler, "init_noise_sigma", 1.0)  # 1 for DDPM-family schedules
    step_kwargs = {} if eta is None else {"eta": eta}
    if "generator" in inspect.signature(scheduler.step).parameters:  # UniPC's step draws no noise
        step_kwargs["generator"] = generators
    scale_input = getattr(scheduler, "scale_model_input", lambda sample, t: sample)
    for t in tqdm(scheduler.timesteps, desc="sampling", leave=False, disable=not progress):
        model_input = scale_input(x, t).to(dtype)
        if channels_last:
            model_input = model_input.contiguous(memory_format=torch.channels_last)
        model_output = (predict(model_input, t.to(device)) if predict else unet(model_input, t.to(device)).sample).float()
        output = scheduler.step(model_output, t, x, **step_kwargs)
        yield t, x, output
        x = output.prev_sample


@torch.no_grad()
def sample_images(unet, scheduler, num_images: int, num_inference_steps: int, seed: int = 0,
                  batch_size: int = 64, device=None, eta: float | None = None, channels_last: bool = False,
                  progress: bool = False, first_index: int = 0, predict_for=None) -> torch.Tensor:
    """``num_images`` samples as uint8 (N, C, H, W) on the CPU: images first_index ... of ``seed``.

    ``predict_for(start, end)`` gives the ``predict`` function for images start ... end - 1 (e.g.
    their class labels with guidance); unset, the UNet is called plainly.
    """
    device = torch.device(device or next(unet.parameters()).device)
    out = []
    for start in range(first_index, first_index + num_images, batch_size):
        n = min(batch_size, first_index + num_images - start)
        generators = image_generators(seed, range(start, start + n), device)
        x = None
        predict = predict_for(start - first_index, start - first_index + n) if predict_for else None
        for _, _, output in reverse_process(unet, scheduler, num_inference_steps, generators, eta, channels_last,
                                            progress, predict):
            x = output.prev_sample
        out.append(to_uint8(x).cpu())
    return torch.cat(out)
