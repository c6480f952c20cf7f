"""What samples are compared with: a dataset split's images, a seeded subset of them, and the cache name of
their features (dataset, split, resolution, count, seed and filter: a sweep computes them once).

Its functions read the reference fields of ``evaluate_fid.py``'s arguments (``smallgen.evaluation``).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch

from smallgen.config import DataArguments
from smallgen.data import decode_image, decode_to_uint8, load_split
from smallgen.errors import UserError


class ReferenceImages(torch.utils.data.Dataset):
    """A dataset split's images, decoded only if torch-fidelity's cache misses."""

    def __init__(self, dataset, image_column: str, indices: np.ndarray, resolution: int, interpolation: str):
        self.dataset, self.image_column, self.indices = dataset, image_column, indices
        self.data_args = DataArguments(dataset_name="-", resolution=resolution, interpolation=interpolation)
        self._images = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._images is None:
            subset = self.dataset.select(self.indices)
            self._images = decode_to_uint8(subset, self.image_column, self.data_args, desc="decoding reference")
        return self._images[index]



def reference_indices(total: int, count: int | None, seed: int) -> np.ndarray:
    """All rows, or ``count`` of them drawn like torch-fidelity's regression test (sorted)."""
    if count is None or count >= total:
        return np.arange(total)
    return np.sort(np.random.RandomState(seed).choice(total, count, replace=False))



def load_reference(args) -> tuple[ReferenceImages, str, int]:
    """(lazy reference images, cache key, resolution)."""
    data_args = DataArguments(
        dataset_name=args.dataset_name, dataset_config_name=args.dataset_config_name,
        train_data_dir=args.train_data_dir, image_column=args.image_column,
        resolution=args.resolution or 1, interpolation=args.interpolation,
    )
    dataset, column, source = load_split(data_args, args.split)
    resolution = args.resolution
    if resolution is None:  # the data's own size, read from its first image
        first = decode_image(dataset[0][column], f"row 0 of {source}")
        if first.width != first.height:
            raise UserError(f"{source} has {first.width}x{first.height} images: pass --resolution to crop them")
        resolution = first.width
    indices = reference_indices(len(dataset), args.num_reference, args.reference_seed)
    where = args.dataset_name or args.train_data_dir
    slug = os.path.basename(os.path.normpath(where)).replace("/", "_") or "data"
    where_id = hashlib.sha1(os.path.abspath(where).encode() if os.path.exists(where) else where.encode())
    key = (f"smallgen-{slug}-{where_id.hexdigest()[:8]}-{args.dataset_config_name or 'default'}-{args.split}"
           f"-{resolution}px-{len(indices)}of{len(dataset)}-rs{args.reference_seed}-{args.interpolation}")
    return ReferenceImages(dataset, column, indices, resolution, args.interpolation), key, resolution



def reference_description(args, count: int, resolution: int) -> str:
    where = args.dataset_name or args.train_data_dir
    return f"{where} [{args.split}] {count} images at {resolution}px"
