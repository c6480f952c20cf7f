"""Training losses: small callables that know the math, not the network or the training loop.

Every loss takes the network as a plain function ``net(x, t) -> tensor`` (or ``net(x)``), the
clean images and a ``torch.Generator`` for its randomness, and returns one value per image, so
the caller decides how to average (batch mean in training, a weighted sum in validation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.schedulers import NoiseSchedule


class DiffusionLoss:
    """Denoising loss of Ho et al. (2020) at t ~ U{0, T-1}, optionally min-SNR-gamma weighted.

    The target is eps, x_0 or v as the schedule's ``prediction_type`` says. Min-SNR (Hang et al.
    2023) weights each image by min(SNR_t, gamma) / SNR_t for eps, / (SNR_t + 1) for v, and
    min(SNR_t, gamma) for x_0, which equalises the effective weight across noise levels.
    """

    def __init__(self, schedule: NoiseSchedule, snr_gamma: float | None = None):
        if snr_gamma is not None and snr_gamma <= 0:
            raise ValueError(f"snr_gamma must be positive; got {snr_gamma}")
        self.schedule = schedule
        self.snr_gamma = snr_gamma

    def to(self, device) -> DiffusionLoss:
        self.schedule.to(device)
        return self

    def weights(self, timesteps: torch.Tensor) -> torch.Tensor | None:
        if self.snr_gamma is None:
            return None
        snr = self.schedule.snr(timesteps)
        clipped = torch.clamp(snr, max=self.snr_gamma)
        return {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1),
                "sample": clipped}[self.schedule.prediction_type]

    def __call__(self, net, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Per-image loss, shape (N,). Draws the noise first, then the timesteps, from ``generator``."""
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        timesteps = torch.randint(0, self.schedule.num_train_timesteps, (images.shape[0],), generator=generator,
                                  device=images.device)
        noisy = self.schedule.add_noise(images, noise, timesteps)
        prediction = net(noisy, timesteps).float()
        target = self.schedule.training_target(images, noise, timesteps).float()
        per_image = (prediction - target).pow(2).mean(dim=tuple(range(1, images.ndim)))
        weights = self.weights(timesteps)
        return per_image if weights is None else per_image * weights


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per image, summed over latent dimensions."""
    return -0.5 * (1 + logvar.float() - mean.float().pow(2) - logvar.float().exp()).sum(dim=1)


def reconstruction_error(reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Squared error per image, summed over pixels (a Gaussian log-likelihood up to scale)."""
    return (reconstruction.float() - images.float()).pow(2).sum(dim=tuple(range(1, images.ndim)))


def gan_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Non-saturating GAN loss: BCE of the logits against all-real or all-fake labels (batch mean)."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits.float(), target)
