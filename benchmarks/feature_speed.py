"""Inception features: torch-fidelity's extractor as the project called it against ours (smallgen/inception_speed.py),
timed alternately in one process on real CIFAR-10 images, with the machine's own convolution speed.

    python benchmarks/feature_speed.py --num_images 64 --output_json results/feature_speed.json
    python benchmarks/feature_speed.py --num_images 1000      # the exactness check on 1,000 images

Each round times torch-fidelity's extractor (its batch of 64, through its own dataset loop) and then ours (its
batch of 32) on the same images; img/s is each one's best round. "max_relative_difference" is the largest
|ours - theirs| over max |theirs| of the pool features (and of the logits with --logits). "conv_gflops" is a
float32 3x3 convolution of 192 channels at 35 px (Inception's middle), timed in the same run: this machine's
speed today, which moves from day to day.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cifar10_images(count: int) -> torch.Tensor:
    """``count`` train images of the full CIFAR-10 in ../shared/data, else of the bundled 1,000-image sample."""
    import numpy as np
    import pyarrow.parquet as pq

    from smallgen.data import decode_image, to_rgb

    shared = sorted((ROOT.parent / "shared" / "data" / "cifar10" / "plain_text").glob("train-*.parquet"))
    files = shared or [ROOT / "data" / "cifar10-sample" / "plain_text" / "train-00000-of-00001.parquet"]
    arrays = []
    for path in files:
        for cell in pq.read_table(path, columns=["img"]).column("img").to_pylist():
            arrays.append(np.asarray(to_rgb(decode_image(cell, str(path)))))
            if len(arrays) == count:
                return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    raise SystemExit(f"only {len(arrays)} CIFAR-10 images found; ask for fewer")


def conv_gflops(repeats: int = 3) -> float:
    """GFLOP/s of a float32 3x3 convolution, 192 to 192 channels at 35 px, batch 32, channels_last."""
    x = torch.randn(32, 192, 35, 35).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(192, 192, 3, 3).contiguous(memory_format=torch.channels_last)
    flops = 2 * 32 * 33 * 33 * 192 * 192 * 9
    with torch.no_grad():
        torch.nn.functional.conv2d(x, weight)
        best = min(_seconds(lambda: torch.nn.functional.conv2d(x, weight)) for _ in range(repeats))
    return flops / best / 1e9


def _seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def extractors(layers: list[str], weights_path: str):
    """(torch-fidelity's extractor as the project called it, ours), each a function of uint8 images."""
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    from smallgen.scores import FEATURE_BATCH, UInt8Images, inception_features

    theirs = create_feature_extractor("inception-v3-compat", layers, cuda=False,
                                      feature_extractor_weights_path=weights_path, verbose=False)

    def torch_fidelity(images):
        found = get_featuresdict_from_dataset(UInt8Images(images), theirs, 64, False, save_cpu_ram=True, verbose=False)
        return [found[layer] for layer in layers]

    def ours(images):
        weights = argparse.Namespace(path=weights_path)
        found = inception_features(images, weights, logits=len(layers) > 1, batch_size=FEATURE_BATCH, verbose=False)
        return [found[layer] for layer in layers]

    return torch_fidelity, ours


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="Alternating timed rounds (each extractor's best counts).")
    parser.add_argument("--logits", action="store_true", help="Also the classifier logits (needs its weights).")
    parser.add_argument("--inception_weights", default=None)
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)

    from smallgen.inception import resolve_inception_weights

    weights = resolve_inception_weights(args.inception_weights)
    layers = ["2048", "logits_unbiased"] if args.logits else ["2048"]
    images = cifar10_images(args.num_images)
    torch_fidelity, ours = extractors(layers, weights.path)
    ours(images[:2])  # first-call set-up, untimed
    speeds, features = {"torch_fidelity": [], "ours": []}, {}
    for _ in range(args.rounds):
        for name, extract in (("torch_fidelity", torch_fidelity), ("ours", ours)):
            start = time.perf_counter()
            features[name] = extract(images)
            speeds[name].append(len(images) / (time.perf_counter() - start))
    difference = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
                     for a, b in zip(features["ours"], features["torch_fidelity"]))
    result = {"num_images": len(images), "threads": torch.get_num_threads(),
              "torch_fidelity_img_per_s": max(speeds["torch_fidelity"]), "ours_img_per_s": max(speeds["ours"]),
              "max_relative_difference": difference, "conv_gflops": conv_gflops(), "weights": weights.source,
              "torch": torch.__version__}
    result["speed_up"] = result["ours_img_per_s"] / result["torch_fidelity_img_per_s"]
    print(json.dumps(result, indent=2))
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
