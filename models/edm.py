"""The EDM formulation (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models"): the preconditioned denoiser and its training loss. No network, no loop.

A network F is wrapped as the denoiser

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))
    c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),  c_noise = ln(sigma) / 4,              (sd = sigma_data)

the same coefficients diffusers' EDMEulerScheduler and EDMDPMSolverMultistepScheduler apply at
sampling time (their "epsilon" prediction type), so a trained network samples with them directly.
Training draws ln(sigma) ~ N(P_mean, P_std^2) and weights the squared error of D by
lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2, which makes the effective target of F unit-variance.
"""

from __future__ import annotations

import torch

SIGMA_DATA = 0.5  # the paper's value for images in [-1, 1]
P_MEAN, P_STD = -1.2, 1.2  # the paper's log-normal of training noise levels (CIFAR-10)


def _column(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.ndim - 1)))


class EDMPreconditioning:
    def __init__(self, sigma_data: float = SIGMA_DATA):
        self.sigma_data = sigma_data

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) for a tensor of noise levels."""
        sd = self.sigma_data
        norm = (sigma.pow(2) + sd ** 2).sqrt()
        return sd ** 2 / norm.pow(2), sigma * sd / norm, 1 / norm, sigma.log() / 4

    def denoise(self, network, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(x; sigma) from ``network(scaled input, c_noise) -> F``; ``sigma`` holds one level per image."""
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma.to(torch.float32))
        raw = network(_column(c_in, noisy) * noisy, c_noise)
        return _column(c_skip, noisy) * noisy + _column(c_out, noisy) * raw.float()


class EDMLoss:
    """lambda(sigma) * mean squared error of D(x + sigma n; sigma) against x, per image."""

    def __init__(self, p_mean: float = P_MEAN, p_std: float = P_STD, sigma_data: float = SIGMA_DATA):
        self.p_mean, self.p_std, self.sigma_data = p_mean, p_std, sigma_data

    def to(self, device) -> EDMLoss:
        return self  # nothing to move: the noise levels are drawn on the images' device

    def __call__(self, denoise, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Per-image loss, shape (N,). ``denoise(x, sigma) -> D``; draws the noise, then the levels."""
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=torch.float32)
        normal = torch.randn((images.shape[0],), generator=generator, device=images.device)
        sigma = (normal * self.p_std + self.p_mean).exp()
        noisy = images.float() + _column(sigma, images) * noise
        denoised = denoise(noisy.to(images.dtype), sigma).float()
        weight = (sigma.pow(2) + self.sigma_data ** 2) / (sigma * self.sigma_data).pow(2)
        return weight * (denoised - images.float()).pow(2).mean(dim=tuple(range(1, images.ndim)))
