"""Where every random number of a run comes from, so that runs resume and sample reproducibly.

* Training: the noise, timesteps, latents and flips of a micro-batch come from a generator seeded
  by (seed, step, micro-batch, process); the global RNG (dropout) is reseeded by (seed, step, -1,
  process) every step. Nothing else is drawn, so N/2 steps + resume + N/2 equal N straight steps.
* Validation: batch b of the validation images uses VALIDATION_SEED + b (every model type, every
  epoch, every run), so validation losses are comparable.
* Sampling: image i uses its own generator seeded by (seed, i), as EDM's ``generate.py`` does, so
  the same seed gives the same images whatever the batch size or number of processes.
"""

from __future__ import annotations

import hashlib

import torch

VALIDATION_SEED = 0x5EED


def derived_seed(*parts) -> int:
    """A 63-bit seed from a tuple of ints, the same in every process and Python run."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def step_generator(device, seed: int, step: int, micro: int, process: int) -> torch.Generator:
    return torch.Generator(device).manual_seed(derived_seed(seed, step, micro, process))


def validation_generator(device, batch_index: int) -> torch.Generator:
    return torch.Generator(device).manual_seed(VALIDATION_SEED + batch_index)


def image_generators(seed: int, indices, device) -> list[torch.Generator]:
    """One generator per image index: image i's noise depends only on (seed, i)."""
    return [torch.Generator(device).manual_seed(derived_seed(seed, i)) for i in indices]


def per_image_randn(generators: list[torch.Generator], shape, device, dtype=torch.float32) -> torch.Tensor:
    """(len(generators), *shape) standard normal noise, row i from generator i."""
    return torch.cat([torch.randn((1, *shape), generator=g, device=device, dtype=dtype) for g in generators])
