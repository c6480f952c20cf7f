"""Baseline generators: convolutional VAE, DCGAN and the VAE-GAN hybrid (networks only).

DCGAN layout (Radford et al. 2016) at any power-of-two resolution >= 8: the image is halved by
4x4 stride-2 convolutions down to 4x4 (channels doubling from ``base_channels``), and the
decoder mirrors it with transposed convolutions. Losses live in ``models/losses.py``.

This file imports only torch and diffusers: it is copied into exported pipeline folders so that
``DiffusionPipeline.from_pretrained(path, trust_remote_code=True)`` works without this project.
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def _num_halvings(resolution: int) -> int:
    halvings = math.log2(resolution / 4) if resolution >= 8 else -1
    if halvings < 1 or not float(halvings).is_integer():
        raise ValueError(f"baseline networks need a power-of-two resolution >= 8; got {resolution}")
    return int(halvings)


def _down_trunk(in_channels: int, base_channels: int, halvings: int, first_norm: bool) -> nn.Sequential:
    """Strided 4x4 convolutions from resolution R to 4x4; BatchNorm after all but the first."""
    layers, channels = [], in_channels
    for level in range(halvings):
        out = base_channels * 2**level
        layers.append(nn.Conv2d(channels, out, 4, 2, 1, bias=False))
        if level > 0 or first_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        channels = out
    return nn.Sequential(*layers)


def _init_dcgan(module: nn.Module) -> None:
    """DCGAN's init: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm scales."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class ConvDecoder(ModelMixin, ConfigMixin):
    """Latent vector (N, latent_dim) -> image (N, C, R, R) in [-1, 1]: the DCGAN generator."""

    @register_to_config
    def __init__(self, resolution: int = 32, latent_dim: int = 100, out_channels: int = 3, base_channels: int = 64):
        super().__init__()
        halvings = _num_halvings(resolution)
        top = base_channels * 2 ** (halvings - 1)
        layers = [nn.ConvTranspose2d(latent_dim, top, 4, 1, 0, bias=False), nn.BatchNorm2d(top), nn.ReLU(True)]
        channels = top
        for level in reversed(range(halvings - 1)):
            out = base_channels * 2**level
            layers += [nn.ConvTranspose2d(channels, out, 4, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(True)]
            channels = out
        layers += [nn.ConvTranspose2d(channels, out_channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        _init_dcgan(self)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net(latents.view(latents.shape[0], -1, 1, 1))


class ConvDiscriminator(ModelMixin, ConfigMixin):
    """Image -> one real/fake logit per image: the DCGAN discriminator."""

    @register_to_config
    def __init__(self, resolution: int = 32, in_channels: int = 3, base_channels: int = 64):
        super().__init__()
        halvings = _num_halvings(resolution)
        self.trunk = _down_trunk(in_channels, base_channels, halvings, first_norm=False)
        self.head = nn.Conv2d(base_channels * 2 ** (halvings - 1), 1, 4, 1, 0)
        _init_dcgan(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images)).flatten()


class ConvVAE(ModelMixin, ConfigMixin):
    """Gaussian encoder q(z|x) and the ConvDecoder as p(x|z); prior N(0, I)."""

    @register_to_config
    def __init__(self, resolution: int = 32, latent_dim: int = 128, in_channels: int = 3, base_channels: int = 64):
        super().__init__()
        halvings = _num_halvings(resolution)
        self.encoder = _down_trunk(in_channels, base_channels, halvings, first_norm=False)
        self.to_moments = nn.Linear(base_channels * 2 ** (halvings - 1) * 16, 2 * latent_dim)
        self.decoder = ConvDecoder(resolution, latent_dim, in_channels, base_channels)
        _init_dcgan(self.encoder)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of q(z|x)."""
        mean, logvar = self.to_moments(self.encoder(images).flatten(1)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents)

    def forward(self, images: torch.Tensor, noise: torch.Tensor, prior_latents: torch.Tensor | None = None):
        """(reconstruction, mean, logvar, decoded prior_latents or None); z = mean + exp(logvar / 2) * noise.

        Prior samples go through the same call so that a DistributedDataParallel wrapper sees one forward.
        """
        mean, logvar = self.encode(images)
        reconstruction = self.decode(mean + torch.exp(0.5 * logvar) * noise)
        generated = None if prior_latents is None else self.decode(prior_latents)
        return reconstruction, mean, logvar, generated
