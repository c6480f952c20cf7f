"""Consistency models (Song et al. 2023) trained by consistency training as Easy Consistency Tuning
does it (Geng et al. 2024, "Consistency Models Made Easy"). No network, no loop.

The consistency function wraps a network F like EDM's denoiser, with the boundary coefficients of
Song et al. (Appendix C) that make f(x, sigma_min) = x exact:

    f(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))
    c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2),  c_out = (sigma - sigma_min) sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),  c_noise = ln(sigma) / 4                    (sd = sigma_data)

c_in and c_noise are EDM's (``models/edm.py``), so a finished EDM network is a good start: for
sigma well above sigma_min the two wrappers agree. diffusers' CMStochasticIterativeScheduler applies
the same c_skip, c_out and c_in at sampling time.

Training (ECT): draw t with ln t ~ N(P_mean, P_std^2), a smaller level r = t (1 - q^-(stage+1) n(t))
with n(t) = 1 + k sigmoid(-b t), and one noise n shared by x_t = x + t n and x_r = x + r n. The loss
is lambda(t) d(f(x_t; t), sg f(x_r; r)): sg stops the gradient, d the pseudo-Huber distance
sqrt(|a - b|^2 + c^2) - c (c as in iCT, Song and Dhariwal 2023; c = 0: the L2 norm, ECT's), lambda(t) = (t^2 + sd^2) / (t sd)^2
EDM's weighting. Each stage shrinks the gap t - r by q, from nearly diffusion training (r near 0)
towards the consistency condition between neighbouring levels.
"""

from __future__ import annotations

import torch

from models.edm import SIGMA_DATA, EDMPreconditioning, _column

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0  # Song et al.'s range (EDM's), and diffusers' scheduler defaults
P_MEAN, P_STD = -1.1, 2.0  # ECT's log-normal of t on CIFAR-10
GAP_DECAY, GAP_K, GAP_B = 4.0, 8.0, 1.0  # ECT's q, k and b of the mapping from t to r


class ConsistencyParameterization(EDMPreconditioning):
    """EDM's c_in and c_noise with the boundary c_skip and c_out: f(x, sigma_min) = x."""

    def __init__(self, sigma_data: float = SIGMA_DATA, sigma_min: float = SIGMA_MIN):
        super().__init__(sigma_data)
        self.sigma_min = sigma_min

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        sd, shifted = self.sigma_data, sigma - self.sigma_min
        norm = (sigma.pow(2) + sd ** 2).sqrt()
        return sd ** 2 / (shifted.pow(2) + sd ** 2), shifted * sd / norm, 1 / norm, sigma.log() / 4


def pseudo_huber(difference: torch.Tensor, c: float) -> torch.Tensor:
    """sqrt(|difference|^2 + c^2) - c per image (the L2 norm at c = 0, with no gradient where it is 0:
    t = r = sigma_min gives f = x on both sides, and sqrt has an infinite slope at 0)."""
    squared = difference.pow(2).sum(dim=tuple(range(1, difference.ndim)))
    return (squared + c ** 2).clamp(min=1e-30).sqrt() - c


def ict_huber_c(images: torch.Tensor) -> float:
    """Song and Dhariwal's (iCT) c = 0.00054 sqrt(d), d the values in one image (0.015 at 16 x 16 x 3)."""
    return 0.00054 * images[0].numel() ** 0.5


class ConsistencyTrainingLoss:
    """ECT's loss at a stage (0, 1, ...): the objective sets ``stage`` as training goes. ``huber_c`` None:
    iCT's c for the images' size."""

    def __init__(self, p_mean: float = P_MEAN, p_std: float = P_STD, gap_decay: float = GAP_DECAY,
                 gap_k: float = GAP_K, gap_b: float = GAP_B, huber_c: float | None = None, sigma_data: float = SIGMA_DATA,
                 sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX):
        self.p_mean, self.p_std, self.huber_c, self.sigma_data = p_mean, p_std, huber_c, sigma_data
        self.gap_decay, self.gap_k, self.gap_b = gap_decay, gap_k, gap_b
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.stage = 0

    def to(self, device) -> ConsistencyTrainingLoss:
        return self  # nothing to move: the levels are drawn on the images' device

    def smaller_level(self, t: torch.Tensor) -> torch.Tensor:
        """r for each t at this stage, never below sigma_min (where f(x, r) = x: the data)."""
        gap = self.gap_decay ** -(self.stage + 1) * (1 + self.gap_k * torch.sigmoid(-self.gap_b * t))
        return (t * (1 - gap)).clamp(min=self.sigma_min)

    def __call__(self, consistency, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Per-image loss, shape (N,). ``consistency(x, sigma) -> f``; draws the noise, then the levels."""
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=torch.float32)
        normal = torch.randn((images.shape[0],), generator=generator, device=images.device)
        t = (normal * self.p_std + self.p_mean).exp().clamp(self.sigma_min, self.sigma_max)
        r = self.smaller_level(t)
        clean = images.float()
        randomness = _rng_state(images.device)  # one dropout mask for both evaluations (ECT)
        online = consistency((clean + _column(t, clean) * noise).to(images.dtype), t).float()
        _set_rng_state(images.device, randomness)
        with torch.no_grad():
            target = consistency((clean + _column(r, clean) * noise).to(images.dtype), r).float()
        weight = (t.pow(2) + self.sigma_data ** 2) / (t * self.sigma_data).pow(2)
        c = ict_huber_c(images) if self.huber_c is None else self.huber_c
        return weight * pseudo_huber(online - target, c)


def _rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)
