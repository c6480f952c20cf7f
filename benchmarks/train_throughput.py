"""Training throughput: our training step against diffusers' example step, same model and batch.

    python benchmarks/train_throughput.py --model configs/models/unet-ddpm-cifar10.json --batch_size 128 \
        --mixed_precision bf16 --channels_last --torch_compile          # GPU
    python benchmarks/train_throughput.py --model configs/models/unet-tiny.json --batch_size 16 --steps 10  # CPU

"diffusers example" is the step of examples/unconditional_image_generation/train_unconditional.py:
images already as float batches, diffusers' DDPMScheduler.add_noise, MSE, clipping, AdamW, lr
scheduler, per-parameter EMA and a ``loss.item()`` every step. "ours" is DiffusionObjective.train_step
itself (smallgen/objectives/diffusion.py): uint8 images held on the device with flips there, our
DiffusionLoss, fused AdamW on CUDA, foreach EMA, no host sync, optional channels_last/torch.compile.
Both are timed over --steps steps after --warmup steps; img/s and the ratio are printed (and
written as JSON with --output_json). "ours (real loop)" runs smallgen.trainer.train itself on a
synthetic uint8 dataset of the model's resolution and reads its logged img/s for the same steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(step, steps: int, warmup: int, device) -> float:
    for i in range(warmup):
        step(i)
    _sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    _sync(device)
    return time.perf_counter() - start


def diffusers_example_step(args, device):
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    unet = UNet2DModel.from_config(UNet2DModel.load_config(args.model)).to(device)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=500, num_training_steps=10**6)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    ema.to(device)
    size = unet.config.sample_size
    batch = torch.rand(args.batch_size, 3, size, size, device=device) * 2 - 1
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)

    def step(_):
        noise = torch.randn(batch.shape, device=device)
        timesteps = torch.randint(0, 1000, (batch.shape[0],), device=device).long()
        noisy = scheduler.add_noise(batch, noise, timesteps)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.mse_loss(unet(noisy, timesteps).sample.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        ema.step(unet.parameters())
        loss.detach().item()  # the example logs the loss every step

    return step


def our_step(args, device):
    """The DiffusionObjective's own train_step (no copy), fed like the real loop feeds it."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from diffusers import UNet2DModel

    from smallgen.config import parse_args
    from smallgen.data import random_hflip, uint8_to_model_range
    from smallgen.objectives.base import MicroBatch
    from smallgen.seeding import step_generator
    from smallgen.trainer import build_objective

    size = UNet2DModel.load_config(args.model)["sample_size"]
    flags = ["--model_config_name_or_path", args.model, "--resolution", size, "--use_ema", "--lr_warmup_steps", 500,
             "--mixed_precision", args.mixed_precision]
    flags += [f"--{name}" for name in ("channels_last", "torch_compile") if getattr(args, name)]
    data_args, model_args, train_args = parse_args([str(f) for f in flags])
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=device.type == "cpu")
    objective = build_objective(data_args, model_args, train_args)
    objective.setup(accelerator, max_train_steps=10**6)
    dataset = torch.randint(0, 256, (max(4 * args.batch_size, 1024), 3, size, size), dtype=torch.uint8, device=device)
    order = torch.randperm(len(dataset), device=device)

    def step(i):
        generator = step_generator(device, 0, i, 0, 0)
        start = (i * args.batch_size) % (len(dataset) - args.batch_size)
        clean = random_hflip(uint8_to_model_range(dataset[order[start:start + args.batch_size]]), generator)
        objective.train_step([MicroBatch(clean, generator)])
        for scheduler in objective.lr_schedulers.values():
            scheduler.step()

    return step


def our_real_loop(args, device) -> float:
    """img/s of the real training loop (train()) over the last --steps steps of a short run."""
    import tempfile

    from accelerate.state import AcceleratorState
    from diffusers import UNet2DModel

    from smallgen.config import parse_args
    from smallgen.metrics import read_metrics
    from smallgen.testing import write_sprites_npy
    from smallgen.trainer import train

    size = UNet2DModel.load_config(args.model)["sample_size"]
    total_steps = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as tmp:
        write_sprites_npy(f"{tmp}/data", num_images=args.batch_size * total_steps, size=size, with_labels=False)
        flags = ["--train_data_dir", f"{tmp}/data", "--resolution", size, "--validation_fraction", 0,
                 "--model_config_name_or_path", args.model, "--output_dir", f"{tmp}/run",
                 "--train_batch_size", args.batch_size, "--max_train_steps", total_steps, "--logging_steps", 1,
                 "--use_ema", "--mixed_precision", args.mixed_precision, "--logger", "none",
                 "--checkpointing_steps", 10**9, "--num_sample_images", 1, "--ddpm_num_inference_steps", 1,
                 "--grid_num_inference_steps", 1, "--lr_warmup_steps", 500]
        flags += [f"--{name}" for name in ("channels_last", "torch_compile", "allow_tf32") if getattr(args, name)]
        AcceleratorState._reset_state(reset_partial_state=True)
        train(*parse_args([str(f) for f in flags]))
        records = [r for r in read_metrics(f"{tmp}/run/metrics.jsonl") if "images_per_second" in r][-args.steps:]
    return len(records) * args.batch_size / sum(args.batch_size / r["images_per_second"] for r in records)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="configs/models/unet-tiny.json")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--torch_compile", action="store_true")
    parser.add_argument("--allow_tf32", action="store_true")
    parser.add_argument("--output_json")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
               "model": args.model, "batch_size": args.batch_size, "mixed_precision": args.mixed_precision,
               "channels_last": args.channels_last, "torch_compile": args.torch_compile}
    for name, build in (("diffusers_example", diffusers_example_step), ("ours", our_step)):
        seconds = _time(build(args, device), args.steps, args.warmup, device)
        results[f"{name}_images_per_second"] = args.steps * args.batch_size / seconds
        print(f"{name:>18}: {results[f'{name}_images_per_second']:9.1f} img/s", flush=True)
    results["ours_real_loop_images_per_second"] = our_real_loop(args, device)
    print(f"{'ours (real loop)':>18}: {results['ours_real_loop_images_per_second']:9.1f} img/s", flush=True)
    results["ratio"] = results["ours_images_per_second"] / results["diffusers_example_images_per_second"]
    results["ratio_real_loop"] = results["ours_real_loop_images_per_second"] / results["diffusers_example_images_per_second"]
    print(f"{'ratio':>18}: {results['ratio']:9.2f}x (step), {results['ratio_real_loop']:.2f}x (real loop)")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
