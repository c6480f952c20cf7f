"""The one training loop behind ``train_unconditional.py``, for every model type (Accelerate).

It knows nothing of networks or losses: an Objective (``smallgen/objectives``) does the steps.
What the loop guarantees, whatever the objective:

* Nothing is written before every argument, the network and the data have been checked.
* Exact resume: data order is a pure function of (seed, epoch) and every random draw of a step
  comes from (seed, step, micro-batch, process) (``smallgen.seeding``), so N straight steps equal
  N/2 + resume + N/2 bit for bit. Resuming a finished run does no step and writes nothing.
* The lr schedules count optimizer steps: stepped here once per optimizer step, whatever the
  number of processes or accumulation steps (diffusers issues #1957 and #3954).
* No host sync inside a step: losses are summed on the device, read and checked to be finite every
  ``--logging_steps``; the weights are checked before every checkpoint and before the export, so a
  NaN never reaches a saved file.
* Validation splits its batches over processes and reduces, the same for every model type.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import signal
import time
from dataclasses import dataclass

import torch

from smallgen.checkpoints import (
    RunLock,
    check_output_dir,
    checkpoint_info,
    load_checkpoint,
    prepare_output_dir,
    resolve_resume_checkpoint,
    save_checkpoint,
)
from smallgen.data import ImageFeeder, decode_to_uint8, load_image_datasets, uint8_to_model_range
from smallgen.environment import use_cpu_cores
from smallgen.errors import ConfigError, UserError
from smallgen.files import read_json, save_json
from smallgen.metrics import MetricsLog
from smallgen.objectives.base import MicroBatch
from smallgen.seeding import derived_seed, step_generator, validation_generator


class TrainingDiverged(UserError):
    """The loss or the weights became NaN or infinite."""


class TrainingInterrupted(UserError):
    """SIGTERM or SIGINT: the run stopped after a checkpoint; exits 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


@dataclass
class StepPlan:
    steps_per_epoch: int
    max_train_steps: int
    num_epochs: int

    @classmethod
    def for_run(cls, num_batches: int, args, fixed_steps: int | None = None) -> "StepPlan":
        """From the flags; ``fixed_steps`` is what a time budget came to (--max_train_minutes)."""
        steps_per_epoch = num_batches // args.gradient_accumulation_steps
        if steps_per_epoch == 0:
            raise ConfigError(f"one epoch holds {num_batches} batches, fewer than "
                              f"--gradient_accumulation_steps={args.gradient_accumulation_steps}")
        max_train_steps = fixed_steps or args.max_train_steps or args.num_epochs * steps_per_epoch
        return cls(steps_per_epoch, max_train_steps, math.ceil(max_train_steps / steps_per_epoch))


def build_objective(data_args, model_args, args, labels=None):
    """The model type's Objective with its networks built (ConfigError on bad settings)."""
    from smallgen.objectives import objective_class

    cls = objective_class(model_args.model_type, model_args.class_conditional)
    cls.check_arguments(data_args, model_args, args)
    return cls(data_args, model_args, args, labels)


class Trainer:
    def __init__(self, objective, accelerator, feeder, validation, resume_path, data_args, model_args, args):
        self.objective, self.accelerator, self.feeder = objective, accelerator, feeder
        self.validation_images, self.validation_labels = validation  # labels None unless the objective needs them
        self.resume_path = resume_path
        self.data_args, self.model_args, self.args = data_args, model_args, args
        self.accumulation = args.gradient_accumulation_steps
        self.plan = StepPlan.for_run(len(feeder), args)
        self.metrics = MetricsLog(args.output_dir, accelerator)
        self.global_step, self.first_epoch, self.elapsed_before = 0, 0, 0.0
        self.clock_seconds, self.timing_seconds = 0.0, 0.0  # time in training steps; time spent fixing the budget
        self.last_checkpoint = resume_path
        self.last_train, self.last_val, self.sample_paths = {}, {}, []
        self.progress = None  # the tqdm bar, opened with the logs
        self.run_start = 0.0  # perf_counter() at the start, less the resumed run's elapsed time
        self.sums, self.count = {}, 0  # device sums of the logged values since the last log line
        self.interval_start, self.images_in_interval = 0.0, 0  # for the logged img/s
        self.stop_signal: int | None = None  # set by the first SIGTERM/SIGINT
        self.off_clock = None  # grid size, epochs between grids and validations (planned before training)

    # ------------------------------------------------------------------ the run

    def run(self) -> dict:
        self.setup()
        if self.global_step >= self.plan.max_train_steps and self.resume_path is not None:
            return self.finished_already()
        self.plan_off_clock()
        self.open_logs()
        self.run_start = time.perf_counter() - self.elapsed_before
        previous = {s: signal.signal(s, self.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for epoch in range(self.first_epoch, self.plan.num_epochs):
                self.train_epoch(epoch)
                self.end_epoch(epoch)
                if self.global_step >= self.plan.max_train_steps:
                    break
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
        self.progress.close()
        return self.finish()

    # ------------------------------------------------------------------ preemption

    def on_signal(self, signum, frame) -> None:
        """First signal: stop after this step with a checkpoint. Second: exit now (the last
        complete checkpoint stays the latest; a save in progress is only a .tmp folder)."""
        if self.stop_signal is not None:
            os._exit(128 + signum)
        self.stop_signal = signum

    def stop_requested(self) -> bool:
        """Whether any process got a signal (one tiny all-reduce per step with several processes)."""
        if self.accelerator.num_processes == 1:
            return self.stop_signal is not None
        flag = torch.tensor(float(self.stop_signal or 0), device=self.accelerator.device)
        signum = int(self.accelerator.reduce(flag, "max").item())
        self.stop_signal = self.stop_signal or (signum or None)
        return signum > 0

    def stop_for_signal(self, epoch: int, saved: bool) -> None:
        name = signal.Signals(self.stop_signal).name
        if not saved:
            self.check_weights_finite()
            self.save(epoch)
        self.progress.close()
        raise TrainingInterrupted(
            f"stopped by {name} after step {self.global_step}; the checkpoint is {self.last_checkpoint}. "
            f"Resume with the same command and --resume_from_checkpoint latest", self.stop_signal)

    def setup(self) -> None:
        accelerator = self.accelerator
        self.objective.setup(accelerator, self.plan.max_train_steps)
        accelerator.print(f"model: {self.objective.name}, {self.objective.describe()}")
        if self.args.max_train_minutes:
            self.fit_budget()
        if self.resume_path is not None:
            state = load_checkpoint(self.objective, accelerator, self.resume_path, self.identity())
            self.global_step = state["global_step"]
            self.first_epoch = self.global_step // self.plan.steps_per_epoch
            self.elapsed_before = state.get("elapsed_seconds", 0.0)
            self.clock_seconds = state.get("clock_seconds", 0.0)
            accelerator.print(f"resumed from {self.resume_path} at step {self.global_step}")
        elif self.args.resume_from_checkpoint == "latest":
            accelerator.print("no checkpoint in --output_dir yet: starting a new run")

    def fit_budget(self) -> None:
        """--max_train_minutes: fix the step count, the resumed run's or from a timed warm-up, and
        stretch the lr schedules over it (before a checkpoint restores their position)."""
        from smallgen import budget

        args, accelerator = self.args, self.accelerator
        steps = checkpoint_info(self.resume_path).get("max_train_steps") if self.resume_path else None
        how = f"as planned in {self.resume_path}"
        if steps is None:
            start = time.perf_counter()
            saved = budget.capture_state(self.objective, accelerator)
            self.objective.train_mode(True)
            batches = itertools.chain.from_iterable(self.feeder.epoch(e) for e in itertools.count())
            step_seconds = budget.seconds_per_step(lambda step: self.timing_step(batches, step),
                                                   args.max_train_minutes * 60, self.slowest)
            budget.restore_state(self.objective, accelerator, saved)
            steps = budget.steps_in_budget(args.max_train_minutes, step_seconds, args.max_train_steps)
            self.timing_seconds = time.perf_counter() - start
            how = f"{1000 * step_seconds:.1f} ms a step, timed in {self.timing_seconds:.1f} s and undone"
        self.plan = StepPlan.for_run(len(self.feeder), args, fixed_steps=steps)
        self.objective.make_lr_schedules(steps)
        accelerator.print(f"time budget {args.max_train_minutes:g} min: {steps} optimizer steps ({how})")

    def plan_off_clock(self) -> None:
        """Time a round of sample grids and a validation pass, plan the grids' size and the epochs between
        grids and validations (budget.plan_off_clock) and say what the run spends off the clock."""
        from smallgen import budget

        args, accelerator = self.args, self.accelerator
        validation_seconds = None
        if self.validation_images is not None and self.objective.validation_names:
            start = time.perf_counter()
            self.validate()
            validation_seconds = time.perf_counter() - start
        timed = {}

        def round_seconds(images: int) -> float:  # main process only: the others draw no grids
            if images not in timed:
                timed[images] = self.objective.grid_seconds(images) if accelerator.is_main_process else 0.0
            return timed[images]

        self.off_clock = budget.plan_off_clock(self.plan.num_epochs, args.max_train_minutes, round_seconds,
                                               validation_seconds or 0.0, args.num_sample_images,
                                               args.save_images_epochs)
        accelerator.print(budget.off_clock_summary(self.off_clock, round_seconds(self.off_clock.grid_images),
                                                   validation_seconds, self.first_epoch, self.plan.num_epochs))

    def slowest(self, seconds: float) -> float:
        """The largest of ``seconds`` over the processes (the same on every process)."""
        if self.accelerator.num_processes == 1:
            return seconds
        value = torch.tensor(seconds, device=self.accelerator.device)
        return self.accelerator.reduce(value, "max").item()

    def timing_step(self, batches, step: int) -> None:
        """One real step for the budget's timing, ending with a host sync."""
        logged = self.objective.train_step(self.micro_batches(batches, step))
        for scheduler in self.objective.lr_schedulers.values():
            scheduler.step()
        float(next(iter(logged.values())))

    def finished_already(self) -> dict:
        """Resuming at or past the last step: no step, and an existing export is left as it is."""
        args, say = self.args, self.accelerator.print
        say(f"{self.resume_path} is at step {self.global_step} of {self.plan.max_train_steps}: nothing to train")
        results_path = os.path.join(args.output_dir, "results.json")
        if os.path.exists(results_path) and os.path.exists(os.path.join(args.output_dir, "model_index.json")):
            self.accelerator.end_training()
            return read_json(results_path)
        self.run_start = time.perf_counter() - self.elapsed_before
        return self.finish()

    def open_logs(self) -> None:
        """metrics.jsonl cut back to the resumed step, training_args.json, trackers, progress bar."""
        args, accelerator = self.args, self.accelerator
        self.metrics.cut_back(self.global_step)
        public = {**dataclasses.asdict(self.data_args), **dataclasses.asdict(self.model_args),
                  **args.to_public_dict()}
        if accelerator.is_main_process:
            save_json(os.path.join(args.output_dir, "training_args.json"), public)
        if args.logger != "none":
            accelerator.init_trackers("train_unconditional", config={
                k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in public.items()})
        accelerator.print(f"training: {self.plan.max_train_steps} optimizer steps, {self.plan.steps_per_epoch} per "
                          f"epoch, {args.train_batch_size} x {accelerator.num_processes} processes x "
                          f"{self.accumulation} accumulation per step")
        from tqdm.auto import tqdm

        self.progress = tqdm(total=self.plan.max_train_steps, initial=self.global_step, desc="training", unit="step",
                             disable=not accelerator.is_local_main_process, dynamic_ncols=True)
        self.sums, self.count = {}, 0
        self.interval_start, self.images_in_interval = time.perf_counter(), 0

    # ------------------------------------------------------------------ steps

    def train_epoch(self, epoch: int) -> None:
        self.objective.train_mode(True)
        done_in_epoch = self.global_step - epoch * self.plan.steps_per_epoch
        batches = self.feeder.epoch(epoch, done_in_epoch * self.accumulation)
        for _ in range(self.plan.steps_per_epoch - done_in_epoch):
            self.train_one_step(batches)
            self.after_step(epoch)
            if self.global_step >= self.plan.max_train_steps:
                break

    def micro_batches(self, batches, step: int) -> list[MicroBatch]:
        """The next micro-batches, each with the generator of (seed, step, micro, process)."""
        process = self.accelerator.process_index
        torch.manual_seed(derived_seed(self.args.seed, step, -1, process))  # dropout
        micro_batches = []
        for micro in range(self.accumulation):
            generator = step_generator(self.accelerator.device, self.args.seed, step, micro, process)
            images, labels = next(batches)
            micro_batches.append(MicroBatch(self.feeder.augment(images, generator), generator, labels))
        return micro_batches

    def train_one_step(self, batches) -> None:
        started = time.perf_counter()
        micro_batches = self.micro_batches(batches, self.global_step)
        for key, value in self.objective.train_step(micro_batches).items():
            self.sums[key] = self.sums.get(key, 0) + value
        for scheduler in self.objective.lr_schedulers.values():
            scheduler.step()
        self.count += 1
        self.images_in_interval += sum(len(b.images) for b in micro_batches) * self.accelerator.num_processes
        self.global_step += 1
        self.progress.update(1)
        self.clock_seconds += time.perf_counter() - started

    def after_step(self, epoch: int) -> None:
        args = self.args
        if self.global_step % args.logging_steps == 0 or self.global_step == self.plan.max_train_steps:
            self.log_training(epoch)
        checkpoint_now = args.checkpointing_steps and self.global_step % args.checkpointing_steps == 0
        if checkpoint_now:
            self.check_weights_finite()
            self.save(epoch)
        if self.stop_requested():
            self.stop_for_signal(epoch, saved=bool(checkpoint_now))

    def identity(self) -> dict:
        """What a checkpoint must have been written by to be resumed here."""
        return {"model_type": self.objective.name, "resolution": self.data_args.resolution}

    def save(self, epoch: int) -> None:
        info = {"global_step": self.global_step, "epoch": epoch, "seed": self.args.seed,
                "max_train_steps": self.plan.max_train_steps, "clock_seconds": self.clock_seconds,
                "elapsed_seconds": time.perf_counter() - self.run_start, **self.identity()}
        self.last_checkpoint = save_checkpoint(self.objective, self.accelerator, self.args.output_dir,
                                               self.global_step, self.args.checkpoints_total_limit, info)

    def log_training(self, epoch: int) -> None:
        """Read the summed losses (the one host sync), check them, log them, reset the sums."""
        accelerator = self.accelerator
        self.last_train = {k: accelerator.reduce(v / self.count, "mean").item() for k, v in self.sums.items()}
        self.check_finite(self.last_train)
        lrs = {name: s.get_last_lr()[0] for name, s in self.objective.lr_schedulers.items()}
        record = {"step": self.global_step, "epoch": epoch, **self.last_train, "lr": next(iter(lrs.values())),
                  **({f"lr_{name}": lr for name, lr in lrs.items()} if len(lrs) > 1 else {}),
                  "images_per_second": self.images_in_interval / (time.perf_counter() - self.interval_start)}
        self.progress.set_postfix({k: f"{v:.4g}" for k, v in self.last_train.items()}, refresh=False)
        self.metrics.log(record)
        self.sums, self.count = {}, 0
        self.interval_start, self.images_in_interval = time.perf_counter(), 0

    # ------------------------------------------------------------------ finite checks

    def check_finite(self, values: dict) -> None:
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            self.diverged(", ".join(f"{k} became {v}" for k, v in bad.items()))

    def check_weights_finite(self) -> None:
        if not self.objective.weights_finite():
            self.diverged("the weights became non-finite")

    def diverged(self, what: str) -> None:
        if self.progress is not None:
            self.progress.close()
        where = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint
                 else "no checkpoint was saved yet")
        raise TrainingDiverged(f"{what} by step {self.global_step}; stopping. {where}. Try a lower "
                               "--learning_rate, --max_grad_norm 1, or bf16 instead of fp16.")

    @contextlib.contextmanager
    def writing(self, what: str):
        """An OSError (a full disk) while writing ``what`` becomes one clear message; checkpoints stay."""
        try:
            yield
        except OSError as exc:
            kept = (f"the latest checkpoint is {self.last_checkpoint}, intact" if self.last_checkpoint
                    else "no checkpoint was saved yet")
            raise UserError(f"could not write {what} ({exc}); {kept}. Free some space and run the same command "
                            "with --resume_from_checkpoint latest.") from None

    # ------------------------------------------------------------------ end of epoch: validation, curves, grids

    def end_epoch(self, epoch: int) -> None:
        accelerator, args = self.accelerator, self.args
        last_epoch = epoch == self.plan.num_epochs - 1 or self.global_step >= self.plan.max_train_steps
        validated = {}
        if self.validation_images is not None and ((epoch + 1) % self.off_clock.validate_every == 0 or last_epoch):
            validated = self.last_val = self.validate()
            self.check_finite(self.last_val)
        self.metrics.log({"step": self.global_step, "epoch": epoch, **validated,
                          "elapsed_seconds": time.perf_counter() - self.run_start})
        if accelerator.is_main_process:
            from smallgen.plots import plot_loss_curves

            with self.writing("the loss curves"):
                plot_loss_curves(self.metrics.read(), os.path.join(args.output_dir, "loss_curves.png"),
                                 title=f"{self.objective.name} training and validation losses")
        if accelerator.is_main_process and ((epoch + 1) % self.off_clock.grid_every == 0 or last_epoch):
            with self.writing("the sample grids"):
                self.save_sample_grids(f"epoch_{epoch:04d}")
        accelerator.wait_for_everyone()

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Batch-size-weighted mean of the objective's validation losses; batch b seeded by b."""
        accelerator, images, batch = self.accelerator, self.validation_images, self.args.eval_batch_size
        device, names = accelerator.device, self.objective.validation_names
        if not names:
            return {}
        self.objective.train_mode(False)
        totals: dict[str, torch.Tensor] = {}
        count = torch.zeros((), device=device)
        for b, start in enumerate(range(0, len(images), batch)):
            if b % accelerator.num_processes != accelerator.process_index:
                continue
            clean = uint8_to_model_range(images[start:start + batch].to(device))
            labels = None if self.validation_labels is None else self.validation_labels[start:start + batch].to(device)
            for key, value in self.objective.validation_losses(clean, validation_generator(device, b), labels).items():
                totals[key] = totals.get(key, torch.zeros((), device=device)) + value.float() * len(clean)
            count += len(clean)
        self.objective.train_mode(True)
        stacked = torch.stack([totals.get(k, torch.zeros((), device=device)) for k in names] + [count])
        stacked = accelerator.reduce(stacked, "sum")  # every process joins, even one with no batch
        return {k: (stacked[i] / stacked[-1].clamp(min=1)).item() for i, k in enumerate(names)}

    def save_sample_grids(self, tag: str) -> None:
        from smallgen.plots import save_image_grid

        self.sample_paths = []
        for name, grid in self.objective.sample_grids(self.off_clock.grid_images, self.args.seed).items():
            images, per_row = grid if isinstance(grid, tuple) else (grid, None)  # (images, images per row)
            file = f"{tag}_{name}.png" if name else f"{tag}.png"
            path = save_image_grid(images, os.path.join(self.args.output_dir, "samples", file), per_row)
            self.sample_paths.append(os.path.relpath(path, self.args.output_dir))
            self.metrics.log_images(f"samples/{name}" if name else "samples", images, self.global_step)

    # ------------------------------------------------------------------ export

    def finish(self) -> dict:
        accelerator = self.accelerator
        self.check_weights_finite()
        images_seen = self.global_step * self.args.train_batch_size * accelerator.num_processes * self.accumulation
        results = {**self.last_train, **self.last_val, "global_step": self.global_step,
                   "num_processes": accelerator.num_processes, "images_seen": images_seen,
                   "training_seconds": time.perf_counter() - self.run_start, "clock_seconds": self.clock_seconds,
                   "images_per_second": images_seen / max(self.clock_seconds, 1e-9)}
        if self.args.max_train_minutes:
            results.update(max_train_minutes=self.args.max_train_minutes, timing_seconds=self.timing_seconds)
        from smallgen.budget import process_seconds

        results["wall_seconds"] = process_seconds()  # since the process started, until the export
        accelerator.print(f"{self.global_step} steps, {images_seen} images in {self.clock_seconds / 60:.2f} min of "
                          f"training steps; {results['training_seconds'] / 60:.2f} min with validation, grids "
                          f"and checkpoints")
        if accelerator.is_main_process:
            with self.writing(f"the pipeline to {self.args.output_dir}"):
                self.export(results)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return results

    def export(self, results: dict) -> None:
        from smallgen.export import push_to_hub, write_model_card

        args, say = self.args, self.accelerator.print
        card = self.objective.export(args.output_dir)
        save_json(os.path.join(args.output_dir, "results.json"), results)
        data_values = {k: v for k, v in dataclasses.asdict(self.data_args).items() if v is not None}
        write_model_card(args.output_dir, model_description=card.description, dataset=self.data_args.dataset_name,
                         arguments={**card.arguments, **args.to_public_dict(), **data_values},
                         metrics={k: v for k, v in results.items() if v is not None},
                         sample_images=self.sample_paths, tags=card.tags, trust_remote_code=card.trust_remote_code,
                         load_from=args.output_dir)  # push_to_hub points it at the repo
        say(f"pipeline saved to {args.output_dir}")
        if args.push_to_hub:
            repo_id = push_to_hub(args.output_dir, args.hub_model_id, args.hub_token, args.hub_private_repo)
            say(f"pushed to the Hub as {repo_id}")


def train(data_args, model_args, args) -> dict:
    """Check everything, then train, export the pipeline to ``args.output_dir`` and return the metrics."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    from smallgen.objectives import objective_class

    resuming = args.resume_from_checkpoint is not None
    objective_cls = objective_class(model_args.model_type, model_args.class_conditional)
    objective_cls.check_arguments(data_args, model_args, args)  # config errors first
    check_output_dir(args.output_dir, resuming, args.overwrite_output_dir)
    resume_path = resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision, log_with=None if args.logger == "none" else args.logger,
        project_config=ProjectConfiguration(project_dir=args.output_dir,
                                            logging_dir=os.path.join(args.output_dir, args.logging_dir)))
    use_cpu_cores(accelerator, args.cpu_threads)
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    with accelerator.main_process_first():  # one process fills the datasets cache
        data = load_image_datasets(data_args)
    accelerator.print(f"data: {data.summary()}")
    labels, validation_labels = _labels(data, objective_cls.needs_labels)
    set_seed(args.seed)  # right before the networks are built: their initial weights come from it
    objective = build_objective(data_args, model_args, args, labels)
    feeder = ImageFeeder(data.train, data.image_column, data_args, args, accelerator)
    if labels is not None:
        feeder.use_labels(labels.values)
    validation_images = None
    if data.validation is not None and len(data.validation):
        validation_images = decode_to_uint8(data.validation, data.image_column, data_args,
                                            desc="loading validation images", show_progress=accelerator.is_main_process)
        if feeder.on_device:
            validation_images = validation_images.to(accelerator.device)  # moved once, not every epoch
    trainer = Trainer(objective, accelerator, feeder, (validation_images, validation_labels), resume_path,
                      data_args, model_args, args)
    lock = RunLock(args.output_dir)
    try:
        if accelerator.is_main_process:  # everything above was checked: only now may the folder change
            lock.acquire()
            prepare_output_dir(args.output_dir, args.logging_dir, resuming, args.overwrite_output_dir)
        accelerator.wait_for_everyone()
        return trainer.run()
    finally:
        lock.release()


def _labels(data, needed: bool):
    """(training Labels, validation label values) when the objective conditions on labels, else Nones."""
    if not needed:
        return None, None
    from smallgen.data import load_labels

    labels = load_labels(data.train, data.label_column, data.class_names, data.source)
    validation = None
    if data.validation is not None and len(data.validation):
        validation = load_labels(data.validation, data.label_column, labels.names, data.source).values
    return labels, validation


def main(argv: list[str] | None = None) -> dict:
    from smallgen.config import parse_args
    from smallgen.errors import exit_on_user_error

    with exit_on_user_error():
        return train(*parse_args(argv))
