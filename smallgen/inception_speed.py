"""torch-fidelity's Inception-v3 feature extractor, run well on a CPU: the same network, weights, resize and
preprocessing, its features within 1e-5 relative of torch-fidelity's own (``tests/test_inception_speed.py``).

What changes is how the work is laid out, never what is computed:
- every BatchNorm is folded into the convolution before it (eval mode: an affine map of its output);
- the 1x1 convolutions of one block that read the same input run as one convolution with their output
  channels stacked (a few wide matrix products instead of several narrow ones), each branch reading its slice;
- weights and activations are ``channels_last`` (oneDNN's fast layout on CPUs);
- the TF1-compatible bilinear resize is two small matrix products (it is linear and separable) instead of
  torch-fidelity's per-pixel gather.
Each block still runs torch-fidelity's own ``forward``. On a GPU, TF32 stays off inside the extractor: FID
needs float32's precision (``no_tf32``).

``benchmarks/feature_speed.py`` measures it against torch-fidelity's extractor in one run.
"""

from __future__ import annotations

import contextlib
import copy
import functools

import torch
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

# Per block class: the names of the 1x1 units that read the block's input (merged into one convolution).
SIBLINGS = {
    "InceptionA": ("branch1x1", "branch5x5_1", "branch3x3dbl_1"),
    "InceptionC": ("branch1x1", "branch7x7_1", "branch7x7dbl_1"),
    "InceptionD": ("branch3x3_1", "branch7x7x3_1"),
    "InceptionE_1": ("branch1x1", "branch3x3_1", "branch3x3dbl_1"),
    "InceptionE_2": ("branch1x1", "branch3x3_1", "branch3x3dbl_1"),
}
STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "MaxPool_2")
BLOCKS = ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
          "Mixed_7a", "Mixed_7b", "Mixed_7c")


@functools.lru_cache(maxsize=8)  # made once per image size, not per batch
def tf1_resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in): TF 1.x's bilinear resize along one axis, align_corners=False (the source of
    output pixel i is i * size_in / size_out, its two neighbours weighted linearly, the last one repeated)."""
    source = torch.arange(size_out, dtype=torch.float64) * (size_in / size_out)
    low = source.floor().long().clamp(max=size_in - 1)
    high = (low + 1).clamp(max=size_in - 1)
    fraction = source - low
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    matrix[torch.arange(size_out), low] += 1 - fraction
    matrix[torch.arange(size_out), high] += fraction
    return matrix.float()


class MergedConvolution(torch.nn.Module):
    """The stacked 1x1 convolutions of one block's siblings, run once per input (the first sibling asks)."""

    def __init__(self, units):
        super().__init__()
        self.register_buffer("weight", torch.cat([u.conv.weight for u in units]))
        self.register_buffer("bias", torch.cat([u.conv.bias for u in units]))
        self.input = self.output = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input is not x:
            self.input, self.output = x, F.relu_(F.conv2d(x, self.weight, self.bias))
        return self.output

    def release(self) -> None:
        self.input = self.output = None


class Slice(torch.nn.Module):
    """One sibling's output channels of a MergedConvolution."""

    def __init__(self, merged: MergedConvolution, start: int, stop: int):
        super().__init__()
        self.merged, self.start, self.stop = merged, start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merged(x)[:, self.start:self.stop]


def fold_batchnorms(network: torch.nn.Module) -> None:
    """Every BasicConv2d's BatchNorm folded into its convolution (which gains a bias)."""
    for unit in network.modules():
        if hasattr(unit, "conv") and isinstance(getattr(unit, "bn", None), torch.nn.BatchNorm2d):
            unit.conv = fuse_conv_bn_eval(unit.conv, unit.bn)
            unit.bn = torch.nn.Identity()


def merge_siblings(block: torch.nn.Module) -> MergedConvolution | None:
    names = SIBLINGS.get(type(block).__name__)
    if not names:
        return None
    units = [getattr(block, name) for name in names]
    merged, start = MergedConvolution(units), 0
    for name, unit in zip(names, units):
        stop = start + unit.conv.out_channels
        setattr(block, name, Slice(merged, start, stop))
        start = stop
    return merged


class FastInceptionV3(torch.nn.Module):
    """``extractor`` (torch-fidelity's FeatureExtractorInceptionV3) laid out for speed; called on uint8
    (N, 3, H, W) images it returns the same tuple of features, in ``extractor.features_list`` order."""

    def __init__(self, extractor):
        super().__init__()
        network = copy.deepcopy(extractor).float().eval()
        fold_batchnorms(network)
        self.merged = torch.nn.ModuleList(m for m in (merge_siblings(getattr(network, n)) for n in BLOCKS) if m)
        self.network = network.to(memory_format=torch.channels_last)
        self.features_list = list(extractor.features_list)
        self.size = extractor.INPUT_IMAGE_SIZE
        unknown = set(self.features_list) - {"2048", "logits_unbiased", "logits"}
        if unknown:
            raise ValueError(f"features {sorted(unknown)} are not offered by the fast extractor")

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float32 (N, 3, 299, 299) in [-1, 1] as torch-fidelity makes them."""
        x = images.float()
        rows = tf1_resize_matrix(x.shape[2], self.size).to(x.device)
        columns = tf1_resize_matrix(x.shape[3], self.size).to(x.device)
        x = rows @ x @ columns.T
        return ((x - 128) / 128).contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (N, 3, H, W); got {images.dtype} {tuple(images.shape)}")
        net = self.network
        with no_tf32():
            x = self.resize(images)
            for name in STEM + BLOCKS:
                x = getattr(net, name)(x)
            for merged in self.merged:
                merged.release()
            pool = torch.flatten(net.AvgPool(x), 1)
            features = {"2048": pool}
            if {"logits_unbiased", "logits"} & set(self.features_list):
                features["logits_unbiased"] = pool.mm(net.fc.weight.T)
                features["logits"] = features["logits_unbiased"] + net.fc.bias.unsqueeze(0)
        return tuple(features[name].float() for name in self.features_list)


@contextlib.contextmanager
def no_tf32():
    """float32 matrix products and convolutions stay float32 on a GPU (TF32 would move FID)."""
    if not torch.cuda.is_available():
        yield
        return
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
