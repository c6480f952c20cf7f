"""One-call sampling speed on the CPU (#35): what channels_last, bf16 autocast, torch.compile and the
batch size give the quick start's UNet, sampling one network call an image as the consistency model does.

    python benchmarks/one_call_speed.py --unet runs/quickstart/unet      # the table in docs/benchmarks.md

Each variant samples ``--batch_sizes`` images with a ConsistencyPipeline (1 step), image i from
generator (0, i); img/s is the median of ``--repeats`` timed calls after a warm-up call (and after
compilation, timed apart). "max |diff|" is the largest difference from the float32 images of the same
batch, in [0, 1] units (1/255 is one level of an 8-bit image). Without ``--unet`` the UNet is the
quick start's architecture untrained (the speed is the same; the differences are not representative).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {  # name: (channels_last, bf16 autocast, torch.compile)
    "float32": (False, False, False),
    "channels_last": (True, False, False),
    "bf16 autocast": (False, True, False),
    "bf16 + channels_last": (True, True, False),
    "torch.compile": (False, False, True),
    "torch.compile + channels_last": (True, False, True),
}


def load_pipeline(unet_folder: str | None, resolution: int):
    from diffusers import CMStochasticIterativeScheduler, UNet2DModel

    from models.unet import create_unet
    from pipelines import ConsistencyPipeline
    from smallgen.objectives.consistency import CM_SCHEDULER

    unet = UNet2DModel.from_pretrained(unet_folder) if unet_folder else create_unet("unet-tiny", resolution)
    return ConsistencyPipeline(unet=unet.eval(), scheduler=CMStochasticIterativeScheduler(**CM_SCHEDULER))


def variant_of(pipeline, channels_last: bool, compiled: bool):
    """A copy of the pipeline with its UNet in the variant's layout, compiled if asked."""
    variant = copy.deepcopy(pipeline)
    if channels_last:
        variant.unet.to(memory_format=torch.channels_last)
    if compiled:
        variant.unet = torch.compile(variant.unet)
    return variant


def one_call(pipeline, batch_size: int, bf16: bool) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(i) for i in range(batch_size)]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    steps = {"num_inference_steps": 1} if hasattr(pipeline, "unet") else {}  # the DCGAN: one call anyway
    with autocast:
        images = pipeline(batch_size=batch_size, generator=generators, output_type="pt", **steps)
    return images.images


def dcgan(resolution: int):
    """The protocol's DCGAN generator (configs/cifar10-dcgan.yaml at 16 px), untrained: the speed to beat."""
    from models.baselines import ConvDecoder
    from pipelines import GANPipeline

    return GANPipeline(decoder=ConvDecoder(resolution=resolution, latent_dim=100, base_channels=64).eval())


def measure(pipeline, batch_sizes: list[int], repeats: int, variants: dict, baseline=None) -> list[dict]:
    """One row per variant and batch size; ``baseline`` (another pipeline, e.g. the DCGAN) last, as is."""
    rows, reference = [], {}
    runs = [(name, variant_of(pipeline, channels_last, compiled), bf16)
            for name, (channels_last, bf16, compiled) in variants.items()]
    for name, variant, bf16 in runs + ([("DCGAN generator", baseline, False)] if baseline is not None else []):
        started = time.perf_counter()
        one_call(variant, batch_sizes[0], bf16)  # warm-up (and compilation)
        warm_up = time.perf_counter() - started
        for batch_size in batch_sizes:
            images = one_call(variant, batch_size, bf16)
            seconds = []
            for _ in range(repeats):
                started = time.perf_counter()
                one_call(variant, batch_size, bf16)
                seconds.append(time.perf_counter() - started)
            reference.setdefault(batch_size, images)
            rows.append({"variant": name, "batch_size": batch_size,
                         "images_per_second": batch_size / statistics.median(seconds),
                         "max_abs_diff": (None if variant is baseline else
                                          (images - reference[batch_size]).abs().max().item()),
                         "warm_up_seconds": warm_up})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| variant | batch | img/s | max abs diff (x255) | warm-up s |", "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['batch_size']} | {r['images_per_second']:.0f} | "
              f"{'–' if r['max_abs_diff'] is None else format(255 * r['max_abs_diff'], '.3f')} | "
              f"{r['warm_up_seconds']:.1f} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unet", default=None, help="A trained UNet folder (default: the architecture untrained).")
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[16, 64, 250, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--no_dcgan", action="store_true", help="Leave out the DCGAN generator's rows.")
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = measure(load_pipeline(args.unet, args.resolution), args.batch_sizes, args.repeats,
                   {name: VARIANTS[name] for name in args.variants}, None if args.no_dcgan else dcgan(args.resolution))
    print(markdown(rows))
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
