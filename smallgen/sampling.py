"""Drawing images: every sample grid and every FID sample comes from an exported pipeline's ``__call__``.

``draw_images`` calls a pipeline batch after batch with one generator per image (``smallgen.seeding``),
so image i depends only on (seed, i) whatever the batch size or the number of processes.
``with_sampler`` swaps in the scheduler (and, for DDIM's eta, the diffusers pipeline class) that a
model type's sampler names. ``reverse_process`` is the same loop written out, for the report's
strips of x_t and the predicted x_0 (a pipeline returns only the end); its last frame equals what
the pipeline draws, which a test checks.
"""

from __future__ import annotations

import inspect
from importlib import import_module
from typing import NamedTuple

import numpy as np
import torch

from smallgen.seeding import image_generators, per_image_randn


class Sampler(NamedTuple):
    """A sampler evaluate_fid.py and the grids offer: a diffusers-style scheduler made from the
    pipeline's scheduler config (plus ``options``), run by the pipeline class ``pipeline`` ("module:Class";
    None: the exported pipeline's own class)."""

    scheduler: str
    options: dict = {}
    pipeline: str | None = None


def load_class(where: str):
    module, name = where.split(":")
    return getattr(import_module(module), name)


def with_sampler(pipeline, sampler: Sampler):
    """A pipeline holding the same networks that samples with ``sampler``."""
    scheduler = load_class(sampler.scheduler).from_config(pipeline.scheduler.config, **sampler.options)
    pipeline_class = load_class(sampler.pipeline) if sampler.pipeline else type(pipeline)
    sampling = pipeline_class(**{**pipeline.components, "scheduler": scheduler})
    sampling.set_progress_bar_config(disable=True)
    return sampling


def network_evaluations(scheduler, steps: int) -> int:
    """Network calls per image for ``steps`` sampling steps (Heun's corrector calls it twice a step)."""
    scheduler = type(scheduler).from_config(scheduler.config)
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)


def call_accepts(pipeline, name: str) -> bool:
    return name in inspect.signature(pipeline.__call__).parameters


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats to uint8 exactly as a saved PNG holds them (round, clamp)."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def from_pipeline_output(images: np.ndarray) -> torch.Tensor:
    """A pipeline's "np" images (N, H, W, C floats in [0, 1]) as uint8 (N, 3, H, W), as a PNG holds them."""
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected images (N, H, W, 3) in [0, 1]; got {type(images).__name__} "
                         f"{getattr(images, 'shape', '')}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return torch.from_numpy((images * 255).round().clip(0, 255).astype(np.uint8)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def draw_images(pipeline, num_images: int, seed: int = 0, batch_size: int = 64, first_index: int = 0,
                progress=None, **call_options) -> torch.Tensor:
    """Images first_index ... first_index + num_images - 1 of ``seed`` as uint8 (N, 3, H, W) on the CPU.

    ``call_options`` go to every call; a callable one is called with the batch's image indices first
    (e.g. ``class_labels=lambda indices: [i % 10 for i in indices]``). ``progress``: a tqdm to update.
    """
    device = getattr(pipeline, "_execution_device", None) or torch.device("cpu")
    out = []
    for start in range(first_index, first_index + num_images, batch_size):
        indices = range(start, min(start + batch_size, first_index + num_images))
        options = {k: v(indices) if callable(v) else v for k, v in call_options.items()}
        result = pipeline(batch_size=len(indices), generator=image_generators(seed, indices, device),
                          output_type="np", **options)
        out.append(from_pipeline_output(getattr(result, "images", None)))
        if progress is not None:
            progress.update(len(indices))
    return torch.cat(out)


@torch.no_grad()
def reverse_process(unet, scheduler, num_inference_steps: int, generators: list[torch.Generator],
                    eta: float | None = None):
    """Yield (t, x_t, step output) for every step of an unconditional DDPM-family pipeline's loop
    (DDPMPipeline's, DDIMPipeline's with ``eta``), from noise drawn by ``generators`` (one per image)."""
    device = next(unet.parameters()).device
    config = unet.config
    scheduler.set_timesteps(num_inference_steps)
    x = per_image_randn(generators, (config.in_channels, config.sample_size, config.sample_size), device)
    step_options = {"generator": generators} if eta is None else {"eta": eta, "generator": generators}
    for t in scheduler.timesteps:
        output = scheduler.step(unet(x, t).sample, t, x, **step_options)
        yield t, x, output
        x = output.prev_sample
