"""Conditional flow matching with straight paths (Lipman et al. 2023, "Flow Matching for Generative
Modeling"; Liu et al. 2023, rectified flow). No network, no loop.

Between an image x and Gaussian noise n the path is straight,

    x_t = (1 - t) x + t n,   t in [0, 1],   so   dx_t/dt = v = n - x,

and the network learns the velocity v(x_t, t) by least squares at t drawn from a chosen density
(uniform, or the logit-normal and "mode" densities of Esser et al. 2024, as diffusers'
``compute_density_for_timestep_sampling`` draws them). Sampling integrates dx/dt = v from t = 1
(noise) to t = 0: diffusers' FlowMatchEulerDiscreteScheduler does exactly that with sigma = t and
timestep = 1000 t, so a network trained here samples with it (and FlowMatchHeunDiscreteScheduler).
"""

from __future__ import annotations

import torch

TIMESTEP_SCALE = 1000  # the network sees timestep 1000 t, diffusers' num_train_timesteps for flow matching
TIMESTEP_DENSITIES = ("uniform", "logit_normal", "mode")


def _column(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.ndim - 1)))


class FlowMatchingLoss:
    """|v(x_t, t) - (n - x)|^2 per image, at t from ``density``."""

    def __init__(self, density: str = "uniform", logit_mean: float = 0.0, logit_std: float = 1.0,
                 mode_scale: float = 1.29):
        if density not in TIMESTEP_DENSITIES:
            raise ValueError(f"density must be one of {', '.join(TIMESTEP_DENSITIES)}; got {density!r}")
        self.density, self.logit_mean, self.logit_std, self.mode_scale = density, logit_mean, logit_std, mode_scale

    def to(self, device) -> FlowMatchingLoss:
        return self  # nothing to move: the times are drawn on the images' device

    def sample_times(self, count: int, generator: torch.Generator | None, device) -> torch.Tensor:
        """``count`` times in [0, 1] from the density (diffusers' draw, with our generator)."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        scheme = "none" if self.density == "uniform" else self.density  # diffusers: anything else is uniform
        return compute_density_for_timestep_sampling(scheme, count, logit_mean=self.logit_mean,
                                                     logit_std=self.logit_std, mode_scale=self.mode_scale,
                                                     device=device, generator=generator)

    def __call__(self, velocity, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Per-image loss, shape (N,). ``velocity(x_t, t) -> v``; draws the noise, then the times."""
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=torch.float32)
        t = self.sample_times(images.shape[0], generator, images.device)
        clean = images.float()
        noisy = (1 - _column(t, clean)) * clean + _column(t, clean) * noise
        predicted = velocity(noisy.to(images.dtype), t).float()
        return (predicted - (noise - clean)).pow(2).mean(dim=tuple(range(1, images.ndim)))
