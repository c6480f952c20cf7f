"""Pictures: sample grids and loss curves (PNG, readable at a glance)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import torch
from PIL import Image


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2, scale: int = 1) -> Image.Image:
    """uint8 (N, 3, H, W) images as one PIL grid, ``scale``-times enlarged with nearest neighbours."""
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top:top + h, left:left + w] = image.permute(1, 2, 0).numpy()
    picture = Image.fromarray(grid)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    return picture


def save_image_grid(images: torch.Tensor, path: str, nrow: int | None = None) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    scale = max(1, 128 // images.shape[-1])  # 16 px sprites are unreadable at 1:1
    image_grid(images, nrow, scale=scale).save(path)
    return path


def read_metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_loss_curves(metrics: list[dict], path: str, title: str = "Training and validation loss") -> str:
    """Train loss (per logging interval) and validation loss (per epoch) against optimizer steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    series = {}
    for record in metrics:
        for key, value in record.items():
            if key.endswith("loss") and value is not None and "step" in record:
                series.setdefault(key, ([], []))
                series[key][0].append(record["step"])
                series[key][1].append(value)
    for key, (steps, values) in sorted(series.items()):
        marker = "o" if key.startswith("val") else None
        ax.plot(steps, values, label=key.replace("_", " "), marker=marker, markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (MSE)")
    if series and min(min(v) for _, v in series.values()) > 0:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
