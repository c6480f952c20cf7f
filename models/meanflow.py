"""MeanFlow (Geng, Deng, Bai, Kolter, He 2025, "Mean Flows for One-step Generative Modeling",
arXiv 2505.13447). No network, no loop.

On the straight path x_t = (1 - t) x + t n of flow matching (``models/flow.py``; t = 1 is noise) the
velocity is v = n - x. MeanFlow learns the *average* velocity over [r, t],

    u(z_t, r, t) = 1 / (t - r) * integral_r^t v(z_s, s) ds,   so one step z_r = z_t - (t - r) u(z_t, r, t),

and one network call maps noise to an image (r = 0, t = 1). Differentiating (t - r) u = integral in t
gives the MeanFlow identity u = v - (t - r) du/dt, where du/dt is the total derivative along the path,
d/dt u(z_t, r, t) = v . du/dz + du/dt, a Jacobian-vector product of the network with tangents (v, 1)
on (z_t, t) and 0 on r (``torch.func.jvp``: forward-mode AD, one extra pass). The regression target
u_tgt = v - clip(t - r, 0, 1) du/dt is held fixed (no gradient through it); at r = t it is v, plain flow
matching.

What this follows from the paper (Sec. 4 and Table 1, its ImageNet ablation defaults): (r, t) are
two logit-normal draws, sorted, with r set to t for all but ``ratio`` of the pairs (25%); the
squared error is summed over pixels and divided by (its own value + c)^p with the gradient stopped
(adaptive weighting, p = 1, c = 1e-3). The network sees the time and the interval's length
(``network(z, t, t - r)``: the paper's best embedding of the two times, Table 1c).
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

WEIGHTING_EPS = 1e-3  # the paper's c in w = 1 / (error + c)^p


def _column(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def jvp(function, primals: tuple, tangents: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.func.jvp`` with PyTorch's math attention kernel: the fused CPU and GPU kernels (flash,
    memory-efficient) have no forward-mode AD."""
    with sdpa_kernel(SDPBackend.MATH):
        return torch.func.jvp(function, primals, tangents)


class MeanFlowLoss:
    """The adaptively weighted |u(z_t, r, t) - u_tgt|^2 per image, (r, t) drawn as the paper draws them."""

    def __init__(self, ratio: float = 0.25, logit_mean: float = -0.4, logit_std: float = 1.0,
                 weighting_power: float = 1.0):
        if not 0 <= ratio <= 1:
            raise ValueError(f"ratio must be in [0, 1]; got {ratio}")
        self.ratio, self.logit_mean, self.logit_std = ratio, logit_mean, logit_std
        self.weighting_power = weighting_power

    def to(self, device) -> MeanFlowLoss:
        return self  # nothing to move: the times are drawn on the images' device

    def sample_times(self, count: int, generator: torch.Generator | None, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(r, t), each of shape (count,), r <= t: two logit-normal draws sorted; r = t except for a
        ``ratio`` of them."""
        normal = torch.randn((2, count), generator=generator, device=device) * self.logit_std + self.logit_mean
        pair = torch.sigmoid(normal)
        r, t = pair.min(dim=0).values, pair.max(dim=0).values
        apart = torch.rand((count,), generator=generator, device=device) < self.ratio
        return torch.where(apart, r, t), t

    def prediction_and_target(self, average_velocity, images: torch.Tensor, generator: torch.Generator | None):
        """(u, u_tgt) in float32; ``average_velocity(z, r, t) -> u``. Draws the noise, then (r, t)."""
        clean = images.float()
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=torch.float32)
        r, t = self.sample_times(images.shape[0], generator, images.device)
        noisy = (1 - _column(t, clean)) * clean + _column(t, clean) * noise
        velocity = noise - clean

        def along_path(z, time, start):
            return average_velocity(z.to(images.dtype), start, time).float()

        u = along_path(noisy, t, r)
        return u, velocity - _column((t - r).clamp(0, 1), clean) * self.total_derivative(along_path, noisy, r, t, velocity)

    @staticmethod
    def total_derivative(along_path, noisy, r, t, velocity) -> torch.Tensor:
        """du/dt along the path, without a graph, for the pairs with r < t (the others' target is v: zeros).
        Apart from u's own call: DDP's forward fails inside forward AD with gradients on (so one forward
        more than the paper's single jvp, on a ``ratio`` of the batch only)."""
        du_dt = torch.zeros_like(velocity)
        apart = t > r
        if apart.any():
            with torch.no_grad():  # no collective inside: the UNet has no buffers for DDP to broadcast
                _, derivative = jvp(along_path, (noisy[apart], t[apart], r[apart]),
                                    (velocity[apart], torch.ones_like(t[apart]), torch.zeros_like(r[apart])))
            du_dt[apart] = derivative
        return du_dt

    def __call__(self, average_velocity, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Per-image loss, shape (N,). Its gradient is the paper's: the summed squared error over
        (sg(error) + c)^p; its value is the squared error averaged over pixels, so that the loss curves
        show the error (the weighted value is ~1 by construction at p = 1)."""
        u, target = self.prediction_and_target(average_velocity, images, generator)
        error = (u - target).pow(2).sum(dim=tuple(range(1, images.ndim)))
        weighted = error / (error.detach() + WEIGHTING_EPS).pow(self.weighting_power)
        return weighted - weighted.detach() + error.detach() / images[0].numel()
