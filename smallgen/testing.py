"""Generated fixtures in the exact formats of the real datasets (used by the tests and benchmarks).

The Sprites images cannot be downloaded in every environment; these files have the same names,
dtypes and shapes as the course's ``sprites_1788_16x16.npy`` / ``sprite_labels_nc_1788_16x16.npy``.
"""

from __future__ import annotations

import os

import numpy as np

from smallgen.data import SPRITES_CLASS_NAMES, SPRITES_IMAGES_FILE, SPRITES_LABELS_FILE


def write_sprites_npy(folder: str, num_images: int = 64, seed: int = 0, with_labels: bool = True,
                      size: int = 16) -> tuple[np.ndarray, np.ndarray | None]:
    """Write Sprites-format files: uint8 (N, size, size, 3) images and float64 one-hot (N, 5) labels.

    Each image is a coloured blob on a white background whose colour depends on its class, so a
    model has something learnable. Returns the arrays written.
    """
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, len(SPRITES_CLASS_NAMES), size=num_images)
    palette = np.array([[200, 40, 40], [40, 160, 40], [230, 180, 30], [60, 60, 220], [150, 60, 160]])
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.full((num_images, size, size, 3), 255, dtype=np.uint8)
    for i, c in enumerate(classes):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, size=2)
        radius = rng.uniform(size * 0.2, size * 0.35)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        images[i][mask] = np.clip(palette[c] + rng.integers(-20, 21, size=3), 0, 255)
    np.save(os.path.join(folder, SPRITES_IMAGES_FILE), images)
    labels = None
    if with_labels:
        labels = np.eye(len(SPRITES_CLASS_NAMES), dtype=np.float64)[classes]
        np.save(os.path.join(folder, SPRITES_LABELS_FILE), labels)
    return images, labels
