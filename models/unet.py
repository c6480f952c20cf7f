"""The diffusion network: diffusers' UNet2DModel built from a JSON config in ``configs/models/``.

Shipped configs (diffusers' config format, loadable with ``UNet2DModel.from_config``):

* ``unet-ddpm-cifar10.json``: Ho et al. (2020) CIFAR-10 network, 35.7M parameters: 128 channels,
  multipliers (1, 2, 2, 2), 2 residual blocks per level, attention at 16x16, dropout 0.1.
* ``unet-small-cifar10.json``: 6.5M parameters, three levels, for quick CIFAR-10 runs.
* ``unet-sprites16.json``: three levels (16, 8, 4 px) with attention at 8x8; diffusers' default
  six-level layout cannot run at 16 px.
* ``unet-tiny.json``: 0.7M parameters, for tests and the CPU quick start.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIG_DIR = REPO_ROOT / "configs" / "models"


def default_unet_config(resolution: int) -> str:
    return str(MODEL_CONFIG_DIR / ("unet-sprites16.json" if resolution <= 16 else "unet-small-cifar10.json"))


def resolve_config_path(name_or_path: str) -> str:
    """A config file or folder as given, else relative to the repository (``configs/models/x.json``)."""
    candidates = [Path(name_or_path), REPO_ROOT / name_or_path, MODEL_CONFIG_DIR / name_or_path,
                  MODEL_CONFIG_DIR / f"{name_or_path}.json"]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    # A Hub id is "name" or "owner/name"; anything else that does not exist is a missing local path.
    if name_or_path.startswith((".", "/", "~")) or name_or_path.endswith(".json") or name_or_path.count("/") > 1:
        raise ValueError(f"the UNet config {name_or_path!r} does not exist (a JSON file, a name in "
                         f"{MODEL_CONFIG_DIR.relative_to(REPO_ROOT)}/, a pipeline folder or a Hub id)")
    return name_or_path  # a Hub id ("user/model"): let diffusers try


def load_unet_config(name_or_path: str | None, resolution: int) -> dict:
    """The config dict with ``sample_size`` set; ValueError names what is wrong."""
    from diffusers import UNet2DModel

    path = resolve_config_path(name_or_path or default_unet_config(resolution))
    try:
        if os.path.isfile(path):
            with open(path) as f:
                config = json.load(f)
        else:
            config = dict(UNet2DModel.load_config(path, subfolder="unet" if os.path.isdir(os.path.join(path, "unet")) else None))
    except Exception as exc:  # diffusers and the hub client raise many types
        raise ValueError(f"could not read the UNet config {name_or_path!r} ({type(exc).__name__}: {exc})") from exc
    config["sample_size"] = resolution
    levels = len(config.get("block_out_channels", []))
    if levels and resolution % (2 ** (levels - 1)):
        raise ValueError(
            f"the UNet config {path} halves the image {levels - 1} times, which {resolution} px does not allow; "
            "pick a config with fewer levels (e.g. configs/models/unet-sprites16.json at 16 px)"
        )
    return config


def create_unet(name_or_path: str | None, resolution: int, **overrides):
    """A fresh UNet2DModel; ``overrides`` change config entries (e.g. ``class_embed_type``)."""
    from diffusers import UNet2DModel

    config = {**load_unet_config(name_or_path, resolution), **overrides}
    try:
        return UNet2DModel.from_config(config)
    except Exception as exc:  # from_config raises several types on bad values
        raise ValueError(f"invalid UNet config {name_or_path!r}: {exc}") from exc
