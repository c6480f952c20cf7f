"""The training loop behind ``train_unconditional.py`` (Accelerate: CPU, GPU, several processes).

Why it looks the way it does:

* Exact resume. Data order is a pure function of (seed, epoch); the noise, timesteps and flips
  of a micro-batch come from a generator seeded by (seed, step, micro-batch, process), and the
  global RNG (dropout) is reseeded every step. A checkpoint therefore needs only the weights,
  optimizer, lr schedule and EMA, and N straight steps equal N/2 + resume + N/2 bit for bit.
* The lr schedule counts optimizer steps and is stepped once per optimizer step, by us, whatever
  the number of processes or accumulation steps (diffusers issues #1957 and #3954).
* No host sync inside a step: the loss is summed on the device and read (and checked to be finite)
  every ``--logging_steps`` and before every checkpoint, so a NaN never reaches a checkpoint.
* Checkpoints are written to ``checkpoint-N.tmp`` and renamed: a kill during a save leaves the
  previous checkpoint as the latest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from smallgen.data import (
    ShuffledIndexBatches,
    decode_to_uint8,
    fits_in_memory,
    image_transform,
    load_image_datasets,
    random_hflip,
    uint8_to_model_range,
)
from smallgen.errors import ConfigError, UserError
from smallgen.export import save_json

CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE_FILE = "training_state.json"
VALIDATION_SEED = 0x5EED


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


# ----------------------------------------------------------------------------- output folder and checkpoints


def list_checkpoints(output_dir: str) -> list[Path]:
    """Complete checkpoints (``checkpoint-N``, not ``.tmp``), oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir()
             if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit()
             and (p / TRAINING_STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def resolve_resume_checkpoint(resume: str | None, output_dir: str) -> Path | None:
    if resume is None:
        return None
    if resume == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume)
    if not path.is_dir() or not (path / TRAINING_STATE_FILE).exists():
        raise UserError(f"--resume_from_checkpoint {resume!r} is not a checkpoint folder (no {TRAINING_STATE_FILE})")
    return path


def check_output_dir(args, resuming: bool) -> None:
    """Refuse to write over another run's folder unless asked."""
    folder = Path(args.output_dir)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--output_dir {args.output_dir!r} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not resuming and not args.overwrite_output_dir:
        raise UserError(
            f"--output_dir {args.output_dir!r} already holds files from another run; pass "
            "--overwrite_output_dir to replace them or --resume_from_checkpoint latest to continue"
        )


def prepare_output_dir(args, resuming: bool) -> None:
    """Create the run folder; with --overwrite_output_dir, clear the old run's checkpoints and logs."""
    folder = Path(args.output_dir)
    if folder.is_dir() and not resuming and args.overwrite_output_dir:
        for stale in list(folder.glob(f"{CHECKPOINT_PREFIX}*")) + [folder / args.logging_dir, folder / "samples"]:
            if stale.is_dir():
                shutil.rmtree(stale)
        for name in ("metrics.jsonl",):
            if (folder / name).exists():
                (folder / name).unlink()
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob(f"{CHECKPOINT_PREFIX}*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)  # a save that was interrupted


def save_checkpoint(accelerator, output_dir: str, global_step: int, total_limit: int | None, state: dict) -> Path:
    final = Path(output_dir) / f"{CHECKPOINT_PREFIX}{global_step}"
    tmp = Path(output_dir) / f"{CHECKPOINT_PREFIX}{global_step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        save_json(str(tmp / TRAINING_STATE_FILE), state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # atomic: the checkpoint appears whole or not at all
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


# ----------------------------------------------------------------------------- the diffusion objective


def diffusion_loss(unet, schedule, clean: torch.Tensor, generator: torch.Generator,
                   snr_gamma: float | None = None, channels_last: bool = False) -> torch.Tensor:
    """MSE between the network output and its target at random t, optionally min-SNR weighted."""
    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    timesteps = torch.randint(0, schedule.num_train_timesteps, (clean.shape[0],), generator=generator,
                              device=clean.device)
    noisy = schedule.add_noise(clean, noise, timesteps)
    if channels_last:
        noisy = noisy.contiguous(memory_format=torch.channels_last)
    prediction = unet(noisy, timesteps).sample.float()
    target = schedule.training_target(clean, noise, timesteps).float()
    if snr_gamma is None:
        return F.mse_loss(prediction, target)
    # Min-SNR-gamma (Hang et al. 2023): weight = min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v.
    snr = schedule.snr(timesteps)
    clipped = torch.clamp(snr, max=snr_gamma)
    weight = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}[schedule.prediction_type]
    per_image = F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3))
    return (per_image * weight).mean()


# ----------------------------------------------------------------------------- feeding images


class ImageFeeder:
    """Training batches in [-1, 1] on the device, in the order given by ShuffledIndexBatches.

    Fast path: the split decoded once into one uint8 tensor on the device. Otherwise the
    ``datasets`` transform decodes each batch (DataLoader workers).
    """

    def __init__(self, dataset, image_column: str, data_args, train_args, accelerator):
        self.device = accelerator.device
        self.random_flip = data_args.random_flip
        self.batches = ShuffledIndexBatches(len(dataset), train_args.train_batch_size, train_args.seed,
                                            accelerator.num_processes, accelerator.process_index)
        choice = train_args.dataset_on_device
        fits = fits_in_memory(len(dataset), data_args.resolution, train_args.max_dataset_bytes)
        self.on_device = choice == "yes" or (choice == "auto" and fits)
        if self.on_device:
            self.images = decode_to_uint8(dataset, image_column, data_args, desc="loading images",
                                          show_progress=accelerator.is_local_main_process).to(self.device)
        else:
            no_flip = dataclasses.replace(data_args, random_flip=False)  # flips happen on the device
            self.dataset = dataset.with_transform(image_transform(no_flip, image_column, None, train=True,
                                                                  seed=train_args.seed))

    def __len__(self) -> int:
        return len(self.batches)

    def epoch(self, epoch: int, start_batch: int = 0):
        for indices in self.batches.epoch(epoch, start_batch, self.device if self.on_device else None):
            if self.on_device:
                yield uint8_to_model_range(self.images[indices])
            else:
                yield self.dataset[indices.tolist()]["pixel_values"].to(self.device, non_blocking=True)

    def augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_hflip(images, generator) if self.random_flip else images


def derived_seed(*parts) -> int:
    """A 63-bit seed from a tuple of ints, the same in every process and Python run."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def step_generator(device, seed: int, step: int, micro: int, process: int) -> torch.Generator:
    return torch.Generator(device).manual_seed(derived_seed(seed, step, micro, process))


@torch.no_grad()
def validation_loss(unet, schedule, images: torch.Tensor, batch_size: int, accelerator,
                    channels_last: bool = False) -> float:
    """Mean loss over the validation images at noise and timesteps fixed per batch: comparable
    across epochs and runs."""
    was_training = unet.training
    unet.eval()
    total = torch.zeros((), device=accelerator.device)
    count = torch.zeros((), device=accelerator.device)
    for b, start in enumerate(range(0, len(images), batch_size)):
        if b % accelerator.num_processes != accelerator.process_index:
            continue
        clean = uint8_to_model_range(images[start:start + batch_size].to(accelerator.device))
        generator = torch.Generator(accelerator.device).manual_seed(VALIDATION_SEED + b)
        with accelerator.autocast():
            loss = diffusion_loss(unet, schedule, clean, generator, channels_last=channels_last)
        total += loss * len(clean)
        count += len(clean)
    total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
    unet.train(was_training)
    return (total / count.clamp(min=1)).item()


@dataclass
class Run:
    """What every training loop starts from: the accelerator, the data and the step arithmetic."""

    accelerator: object
    data: object
    feeder: ImageFeeder
    validation_images: torch.Tensor | None
    resume_path: Path | None
    steps_per_epoch: int
    max_train_steps: int
    num_epochs: int


def start_run(data_args, args) -> Run:
    """Accelerator, protected output folder, seeds, data and step counts (shared by all model types)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    resume_path = resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with=None if args.logger == "none" else args.logger,
        project_config=ProjectConfiguration(project_dir=args.output_dir,
                                            logging_dir=os.path.join(args.output_dir, args.logging_dir)),
    )
    check_output_dir(args, resuming=args.resume_from_checkpoint is not None)  # every process: all stop alike
    if accelerator.is_main_process:
        prepare_output_dir(args, resuming=args.resume_from_checkpoint is not None)
    accelerator.wait_for_everyone()
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    set_seed(args.seed)

    with accelerator.main_process_first():  # one process fills the datasets cache
        data = load_image_datasets(data_args)
    accelerator.print(f"data: {data.summary()}")
    feeder = ImageFeeder(data.train, data.image_column, data_args, args, accelerator)
    validation_images = None
    if data.validation is not None and len(data.validation):
        validation_images = decode_to_uint8(data.validation, data.image_column, data_args,
                                            desc="loading validation images",
                                            show_progress=accelerator.is_main_process)
        if feeder.on_device:
            validation_images = validation_images.to(accelerator.device)  # moved once, not every epoch

    accumulation = args.gradient_accumulation_steps
    steps_per_epoch = len(feeder) // accumulation
    if steps_per_epoch == 0:
        raise ConfigError(f"one epoch holds {len(feeder)} batches, fewer than --gradient_accumulation_steps={accumulation}")
    max_train_steps = args.max_train_steps or args.num_epochs * steps_per_epoch
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    return Run(accelerator, data, feeder, validation_images, resume_path, steps_per_epoch, max_train_steps, num_epochs)


def restore(run: Run, args) -> tuple[int, int, float]:
    """(global_step, first_epoch, elapsed seconds) after loading the resume checkpoint, if any."""
    if run.resume_path is None:
        if args.resume_from_checkpoint == "latest":
            run.accelerator.print("no checkpoint in --output_dir yet: starting a new run")
        return 0, 0, 0.0
    run.accelerator.load_state(str(run.resume_path))
    with open(run.resume_path / TRAINING_STATE_FILE) as f:
        state = json.load(f)
    global_step = state["global_step"]
    run.accelerator.print(f"resumed from {run.resume_path} at step {global_step}")
    return global_step, global_step // run.steps_per_epoch, state.get("elapsed_seconds", 0.0)


def open_logs(run: Run, args, global_step: int, data_args, model_args) -> str:
    """metrics.jsonl (cut back to ``global_step`` on resume), training_args.json and the trackers."""
    metrics_path = os.path.join(args.output_dir, "metrics.jsonl")
    if run.accelerator.is_main_process:
        _truncate_metrics(metrics_path, global_step)
        save_json(os.path.join(args.output_dir, "training_args.json"),
                  {**dataclasses.asdict(data_args), **dataclasses.asdict(model_args), **args.to_public_dict()})
    if args.logger != "none":
        run.accelerator.init_trackers("train_unconditional", config=_hparams(data_args, model_args, args))
    return metrics_path


# ----------------------------------------------------------------------------- the run


def train(data_args, diffusion_args, args) -> dict:
    """Train, export the pipeline to ``args.output_dir`` and return the final metrics."""
    if diffusion_args.model_type != "ddpm":
        from smallgen.baselines import train_baseline

        return train_baseline(data_args, diffusion_args, args)
    from diffusers import UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from models.schedulers import DDIMSampler, DDPMSampler, NoiseSchedule
    from models.unet import create_unet
    from smallgen.export import diffusers_scheduler_config, push_to_hub, save_ddpm_pipeline, write_model_card
    from smallgen.plots import plot_loss_curves, read_metrics, save_image_grid
    from smallgen.sampling import sample_images

    run = start_run(data_args, args)
    accelerator, feeder, validation_images = run.accelerator, run.feeder, run.validation_images
    steps_per_epoch, max_train_steps, num_epochs = run.steps_per_epoch, run.max_train_steps, run.num_epochs
    resume_path, accumulation = run.resume_path, args.gradient_accumulation_steps
    main, say = accelerator.is_main_process, accelerator.print
    unet = create_unet(diffusion_args.model_config_name_or_path, data_args.resolution)
    say(f"model: UNet2DModel, {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters")
    schedule = NoiseSchedule(diffusion_args.ddpm_num_steps, diffusion_args.beta_start, diffusion_args.beta_end,
                             diffusion_args.ddpm_beta_schedule, diffusion_args.prediction_type)
    schedule.alphas_cumprod = schedule.alphas_cumprod.to(accelerator.device)
    if args.channels_last:
        unet = unet.to(memory_format=torch.channels_last)

    ema = None
    if args.use_ema:
        ema = EMAModel(unet.parameters(), decay=args.ema_max_decay, use_ema_warmup=args.ema_warmup,
                       inv_gamma=args.ema_inv_gamma, power=args.ema_power, foreach=True,
                       model_cls=UNet2DModel, model_config=unet.config)
        ema.to(accelerator.device)
    fused = accelerator.device.type == "cuda"
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon, fused=fused)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps,
                                 num_training_steps=max_train_steps)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)  # stepped by us, once per optimizer step
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    model_for_training = torch.compile(unet) if args.torch_compile else unet

    global_step, first_epoch, elapsed_before = restore(run, args)

    metrics_path = open_logs(run, args, global_step, data_args, diffusion_args)

    samplers = {
        "ddpm": (DDPMSampler(**_sampler_kwargs(diffusion_args), variance_type=diffusion_args.variance_type),
                 diffusion_args.ddpm_num_inference_steps, None),
        "ddim": (DDIMSampler(**_sampler_kwargs(diffusion_args)), diffusion_args.ddim_num_inference_steps,
                 diffusion_args.ddim_eta),
    }

    def averaged_unet():
        """The weights to sample and export: the EMA if kept, else the trained ones (a copy)."""
        model = UNet2DModel.from_config(accelerator.unwrap_model(unet).config)
        model.load_state_dict(accelerator.unwrap_model(unet).state_dict())
        if ema is not None:
            ema.copy_to(model.parameters())
        return model.to(accelerator.device).eval()

    def save_samples(tag: str) -> list[str]:
        model, paths = averaged_unet(), []
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        for name, (sampler, steps, eta) in samplers.items():
            images = sample_images(model, sampler, args.num_sample_images, steps, seed=args.seed,
                                   batch_size=args.eval_batch_size, eta=eta, channels_last=args.channels_last)
            path = save_image_grid(images, os.path.join(args.output_dir, "samples", f"{tag}_{name}.png"))
            paths.append(os.path.relpath(path, args.output_dir))
            _log_images(accelerator, f"samples/{name}", images, global_step)
        return paths

    say(f"training: {max_train_steps} optimizer steps, {steps_per_epoch} per epoch, "
        f"{args.train_batch_size} x {accelerator.num_processes} processes x {accumulation} accumulation per step")
    progress = tqdm(total=max_train_steps, initial=global_step, desc="training", unit="step",
                    disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    loss_sum = torch.zeros((), device=accelerator.device)
    loss_count = 0
    interval_start, images_in_interval = time.perf_counter(), 0
    run_start = time.perf_counter() - elapsed_before
    last_train_loss = last_val_loss = None
    last_checkpoint = resume_path
    sample_paths: list[str] = []

    def check_finite(value: float) -> None:
        if not math.isfinite(value):
            progress.close()
            where = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was saved yet"
            raise TrainingDiverged(
                f"the training loss became {value} by step {global_step} (lr {lr_scheduler.get_last_lr()[0]:.3g}); "
                f"stopping. {where}. Try a lower --learning_rate, --max_grad_norm 1, or bf16 instead of fp16."
            )

    for epoch in range(first_epoch, num_epochs):
        unet.train()
        start_batch = (global_step - epoch * steps_per_epoch) * accumulation
        batches = feeder.epoch(epoch, start_batch)
        for _ in range(steps_per_epoch - (global_step - epoch * steps_per_epoch)):
            torch.manual_seed(derived_seed(args.seed, global_step, -1, accelerator.process_index))  # dropout
            for micro in range(accumulation):
                generator = step_generator(accelerator.device, args.seed, global_step, micro, accelerator.process_index)
                clean = feeder.augment(next(batches), generator)
                sync = micro == accumulation - 1
                with accelerator.no_sync(unet) if not sync else contextlib.nullcontext():
                    with accelerator.autocast():
                        loss = diffusion_loss(model_for_training, schedule, clean, generator,
                                              diffusion_args.snr_gamma, args.channels_last)
                    accelerator.backward(loss / accumulation)
                loss_sum += loss.detach()
                loss_count += 1
                images_in_interval += clean.shape[0] * accelerator.num_processes
            if args.max_grad_norm is not None:
                accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(unet.parameters())
            global_step += 1
            progress.update(1)

            log_now = global_step % args.logging_steps == 0 or global_step == max_train_steps
            checkpoint_now = args.checkpointing_steps and global_step % args.checkpointing_steps == 0
            if log_now or checkpoint_now:
                last_train_loss = accelerator.reduce(loss_sum / loss_count, "mean").item()  # the one host sync
                check_finite(last_train_loss)
                seconds = time.perf_counter() - interval_start
                record = {"step": global_step, "epoch": epoch, "train_loss": last_train_loss,
                          "lr": lr_scheduler.get_last_lr()[0], "images_per_second": images_in_interval / seconds}
                progress.set_postfix(loss=f"{last_train_loss:.4f}", lr=f"{record['lr']:.2e}",
                                     img_s=f"{record['images_per_second']:.0f}")
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=global_step)
                if main:
                    _append_metrics(metrics_path, record)
                loss_sum.zero_()
                loss_count, images_in_interval, interval_start = 0, 0, time.perf_counter()
            if checkpoint_now:
                last_checkpoint = save_checkpoint(
                    accelerator, args.output_dir, global_step, args.checkpoints_total_limit,
                    {"global_step": global_step, "epoch": epoch, "elapsed_seconds": time.perf_counter() - run_start})
            if global_step >= max_train_steps:
                break

        # End of epoch: validation loss, curves, sample grids.
        if validation_images is not None:
            last_val_loss = validation_loss(unet, schedule, validation_images, args.eval_batch_size, accelerator,
                                            args.channels_last)
            check_finite(last_val_loss)
            accelerator.log({"val_loss": last_val_loss}, step=global_step)
        if main:
            _append_metrics(metrics_path, {"step": global_step, "epoch": epoch, "val_loss": last_val_loss,
                                           "elapsed_seconds": time.perf_counter() - run_start})
            plot_loss_curves(read_metrics(metrics_path), os.path.join(args.output_dir, "loss_curves.png"))
        last_epoch = epoch == num_epochs - 1 or global_step >= max_train_steps
        if main and ((epoch + 1) % args.save_images_epochs == 0 or last_epoch):
            sample_paths = save_samples(f"epoch_{epoch:04d}")
        accelerator.wait_for_everyone()
        if global_step >= max_train_steps:
            break
    progress.close()

    results = {"train_loss": last_train_loss, "val_loss": last_val_loss, "global_step": global_step,
               "training_seconds": time.perf_counter() - run_start}
    if main:
        final_unet = averaged_unet().to("cpu")
        save_ddpm_pipeline(final_unet, diffusion_args, args.output_dir)
        save_json(os.path.join(args.output_dir, "results.json"), results)
        write_model_card(
            args.output_dir,
            model_description=(
                f"A DDPM ({diffusion_args.ddpm_beta_schedule} schedule, T = {diffusion_args.ddpm_num_steps}, "
                f"{diffusion_args.prediction_type} prediction) trained with smallgen's "
                "`train_unconditional.py`. Load it with `DDPMPipeline` or, for fast sampling, `DDIMPipeline`."
            ),
            dataset=data_args.dataset_name,
            arguments={**diffusers_scheduler_config(diffusion_args), **args.to_public_dict(),
                       **{k: v for k, v in dataclasses.asdict(data_args).items() if v is not None}},
            metrics={k: v for k, v in results.items() if v is not None},
            sample_images=sample_paths,
            tags=["ddpm", "ddim"],
        )
        say(f"pipeline saved to {args.output_dir}")
        if args.push_to_hub:
            repo_id = push_to_hub(args.output_dir, args.hub_model_id, args.hub_token, args.hub_private_repo)
            say(f"pushed to the Hub as {repo_id}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


def _sampler_kwargs(diffusion_args) -> dict:
    return dict(num_train_timesteps=diffusion_args.ddpm_num_steps, beta_start=diffusion_args.beta_start,
                beta_end=diffusion_args.beta_end, beta_schedule=diffusion_args.ddpm_beta_schedule,
                prediction_type=diffusion_args.prediction_type)


def _hparams(*arg_objects) -> dict:
    values = {}
    for obj in arg_objects:
        items = obj.to_public_dict() if hasattr(obj, "to_public_dict") else dataclasses.asdict(obj)
        values.update({k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in items.items()})
    return values


def _append_metrics(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: str, global_step: int) -> None:
    """On resume, forget what a previous attempt logged after the checkpoint."""
    from smallgen.plots import read_metrics

    records = [r for r in read_metrics(path) if r.get("step", 0) <= global_step]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def _log_images(accelerator, tag: str, images: torch.Tensor, step: int) -> None:
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images(tag, images, step, dataformats="NCHW")


def main(argv: list[str] | None = None) -> dict:
    from smallgen.config import parse_args
    from smallgen.errors import exit_on_user_error

    with exit_on_user_error():
        data_args, diffusion_args, train_args = parse_args(argv)
        return train(data_args, diffusion_args, train_args)
