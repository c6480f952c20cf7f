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
* One plan: every choice that decides which collective calls a process makes is made before the
  first step (a time budget's count re-planned at fixed steps from reduced timings), the same on
  every process (``smallgen.plan``, ``smallgen.processes``); a process left
  waiting in a collective gives up after ``--ddp_timeout`` seconds, naming the step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
import math
import os
import time

import torch

from smallgen.checkpoints import (
    RunLock,
    check_output_dir,
    checkpoint_info,
    list_checkpoints,
    load_checkpoint,
    prepare_output_dir,
    resolve_resume_checkpoint,
    save_checkpoint,
)
from smallgen.data import ImageFeeder, decode_to_uint8, load_image_datasets, uint8_to_model_range
from smallgen.environment import use_cpu_cores
from smallgen.errors import ConfigError, UserError
from smallgen.export import remove_bests_except, save_best
from smallgen.files import read_json, save_json
from smallgen.metrics import MetricsLog
from smallgen.objectives.base import MicroBatch
from smallgen.plan import RunPlan, step_counts
from smallgen.posthoc_ema import remove_snapshots_after, save_snapshot
from smallgen.processes import StopSignals, TrainingInterrupted, peers_named, shared_plan, slowest
from smallgen.seeding import derived_seed, step_generator, validation_generator

POSTHOC_SNAPSHOTS = 20  # post-hoc EMA snapshots over a run, unless --posthoc_ema_every
SCORES_FIGURE = "scores.png"  # the scores while training, drawn in the run folder and the model card


class TrainingDiverged(UserError):
    """The loss or the weights became NaN or infinite."""


def build_objective(data_args, model_args, args, labels=None):
    """The model type's Objective with its networks built (ConfigError on bad settings)."""
    from smallgen.objectives import objective_class

    cls = objective_class(model_args.model_type, model_args.class_conditional)
    cls.check_arguments(data_args, model_args, args)
    return cls(data_args, model_args, args, labels)


class Trainer:
    def __init__(self, objective, accelerator, feeder, validation, resume_path, data_args, model_args, args,
                 scores=None):
        self.objective, self.accelerator, self.feeder = objective, accelerator, feeder
        self.scores = scores  # smallgen.training_scores.TrainingScores, or None: no scores while training
        self.validation_images, self.validation_labels = validation  # labels None unless the objective needs them
        self.resume_path = resume_path
        self.data_args, self.model_args, self.args = data_args, model_args, args
        self.accumulation = args.gradient_accumulation_steps
        self.plan: RunPlan | None = None  # made once before the first step (make_plan), the same on every process
        self.max_train_steps = 0  # the flags' or the time budget's step count, known before the plan
        self.metrics = MetricsLog(args.output_dir, accelerator)
        self.global_step, self.elapsed_before = 0, 0.0
        self.clock_seconds, self.timing_seconds = 0.0, 0.0  # time in training steps; time spent fixing the budget
        self.last_checkpoint = resume_path
        self.last_train, self.last_val, self.sample_paths = {}, {}, []
        self.progress_bar = None  # tqdm, opened with the logs
        self.run_start = 0.0  # perf_counter() at the start, less the resumed run's elapsed time
        self.sums, self.count = {}, 0  # device sums of the logged values since the last log line
        self.interval_start, self.images_in_interval = 0.0, 0  # for the logged img/s
        self.grid_seconds, self.validation_seconds = 0.0, None  # a round of grids and a validation, timed
        self.timed_off_clock = False  # False: the off-clock schedule came from a checkpoint's plan
        self.evaluation_seconds, self.scoring_seconds = None, 0.0  # one evaluation, timed; all of them, spent
        self.last_scores: dict = {}
        self.best: dict = {}  # --keep_best: {"step": ..., score: ...}, stored in every checkpoint

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict:
        """Every decision below comes from ``self.plan``: the same on every process (smallgen/plan.py)."""
        accelerator, plan = self.accelerator, self.start()
        if plan is None:
            return self.finished_already()
        self.open_logs()
        epoch = self.global_step // plan.steps_per_epoch
        with StopSignals(accelerator) as stop:
            while epoch < self.plan.num_epochs:  # a time budget's re-plan may move the end
                plan = self.plan
                self.objective.train_mode(True)
                batches = self.feeder.epoch(epoch, (self.global_step - epoch * plan.steps_per_epoch) * self.accumulation)
                while self.global_step < min((epoch + 1) * plan.steps_per_epoch, plan.max_train_steps):
                    # step: one optimizer step over --gradient_accumulation_steps micro-batches
                    self.train_one_step(batches)
                    # re-plan: a time budget's count follows the loop's pace (the same on every process)
                    if plan.replans(self.global_step):
                        plan = self.replan()
                    # log: read the summed losses (the one host sync) and check them finite
                    if plan.logs(self.global_step):
                        self.log_training(epoch)
                    # score: samples from every process, scored by the main process, the same numbers to all
                    if plan.evaluates(self.global_step):
                        self.evaluate()
                    # post-hoc EMA snapshot (main process, no collective)
                    if self.snapshots_posthoc(self.global_step):
                        self.save_posthoc_snapshot()
                    # checkpoint: the weights checked finite first
                    saved = plan.checkpoints(self.global_step)
                    if saved:
                        self.save(epoch)
                    # stop on a signal: every process asks after every step (one all-reduce)
                    if stop.requested():
                        self.stop_for_signal(stop, epoch, saved)
                # validate: each process its share of the batches, reduced
                validated = self.validate(check=True) if plan.validates(epoch, self.global_step) else {}
                self.log_epoch(epoch, validated)
                # grids and loss curves (main process), as often as grids: a redraw of the curves takes 0.25 s
                if plan.draws_grids(epoch, self.global_step) and accelerator.is_main_process:
                    self.draw_loss_curves()
                    with self.writing("the sample grids"):
                        self.save_sample_grids(f"epoch_{epoch:04d}")
                accelerator.wait_for_everyone()
                epoch += 1
        self.progress_bar.close()
        # export: the pipeline, results.json and the model card (smallgen/export.py)
        return self.finish()

    # ------------------------------------------------------------------ before the loop: resume, budget, plan

    def start(self) -> RunPlan | None:
        """Optimizers, the resumed state, a time budget's step count, then the plan (None: resumed at the end)."""
        accelerator, args = self.accelerator, self.args
        state = checkpoint_info(self.resume_path) if self.resume_path else {}
        self.max_train_steps = step_counts(len(self.feeder), self.accumulation, args.max_train_steps, args.num_epochs)[1]
        self.objective.setup(accelerator, self.max_train_steps)
        accelerator.print(f"model: {self.objective.name}, {self.objective.describe()}")
        if args.max_train_minutes:  # the lr schedules span the budget's steps (before a checkpoint restores them)
            self.max_train_steps = state.get("max_train_steps") or self.time_the_budget()
            self.objective.make_schedules(state.get("plan", {}).get("planned_steps") or self.max_train_steps)
            self.schedules_follow_the_plan()
            if state:
                accelerator.print(f"time budget {args.max_train_minutes:g} min: {self.max_train_steps} optimizer "
                                  f"steps, as planned in {self.resume_path}")
        if self.resume_path is not None:
            state = load_checkpoint(self.objective, accelerator, self.resume_path, self.identity())
            self.global_step = state["global_step"]
            self.elapsed_before = state.get("elapsed_seconds", 0.0)
            self.clock_seconds = state.get("clock_seconds", 0.0)
            self.best = state.get("best") or {}
            accelerator.print(f"resumed from {self.resume_path} at step {self.global_step}")
        elif args.resume_from_checkpoint == "latest":
            accelerator.print("no checkpoint in --output_dir yet: starting a new run")
        if self.resume_path is not None and self.global_step >= self.max_train_steps:
            return None
        if self.scores is not None:
            self.scores.prepare()  # the reference's features, extracted or read from the cache
        self.prune_bests()  # a best written after the resumed checkpoint is forgotten
        if self.objective.posthoc is not None and accelerator.is_main_process:
            remove_snapshots_after(args.output_dir, self.global_step)  # those of a forgotten attempt
        self.plan = self.make_plan(state.get("plan"))
        print(self.plan.summary(accelerator.process_index, accelerator.num_processes), flush=True)  # every process
        accelerator.print(self.off_clock_summary())
        return self.plan

    def time_the_budget(self) -> int:
        """--max_train_minutes: time real steps (the slowest process's), undo them, return the steps that fit."""
        from smallgen import budget

        args, accelerator = self.args, self.accelerator
        start = time.perf_counter()
        saved = budget.capture_state(self.objective, accelerator)
        self.objective.train_mode(True)
        batches = itertools.chain.from_iterable(self.feeder.epoch(e) for e in itertools.count())
        step_seconds = budget.seconds_per_step(lambda step, sync: self.timing_step(batches, step, sync),
                                               args.max_train_minutes * 60, lambda s: slowest(accelerator, s))
        budget.restore_state(self.objective, accelerator, saved)
        steps = budget.steps_in_budget(args.max_train_minutes, step_seconds, args.max_train_steps)
        self.timing_seconds = time.perf_counter() - start
        accelerator.print(f"time budget {args.max_train_minutes:g} min: {steps} optimizer steps "
                          f"({1000 * step_seconds:.1f} ms a step, timed in {self.timing_seconds:.1f} s and undone)")
        return steps

    def schedules_follow_the_plan(self) -> None:
        """The lr schedules read their step through the plan, which a re-plan stretches."""
        for scheduler in self.objective.lr_schedulers.values():
            scheduler.lr_lambdas = [lambda step, at=schedule: at(self.plan.schedule_position(step) if self.plan else step)
                                    for schedule in scheduler.lr_lambdas]

    def replan(self) -> RunPlan:
        """--max_train_minutes: the steps that fill what is left of the budget at the pace since the last
        re-plan, both the slowest process's (reduced, so every process computes the same count)."""
        from smallgen.budget import replanned_steps

        if self.accelerator.device.type == "cuda":  # the steps queued so far belong to the clock
            started = time.perf_counter()
            torch.cuda.synchronize()
            self.clock_seconds += time.perf_counter() - started
        accelerator, (step, clock) = self.accelerator, self.pace_mark
        recent = slowest(accelerator, self.clock_seconds - clock)
        steps = replanned_steps(self.global_step, slowest(accelerator, self.clock_seconds), recent,
                                self.global_step - step, self.args.max_train_minutes * 60, self.args.max_train_steps)
        self.pace_mark = (self.global_step, self.clock_seconds)
        plan = shared_plan(accelerator, self.plan.replanned(self.global_step, steps))
        if plan.max_train_steps != self.plan.max_train_steps:
            self.progress_bar.total = plan.max_train_steps
            self.progress_bar.refresh()
        self.plan = plan
        return plan

    def timing_step(self, batches, step: int, sync: bool) -> None:
        """One real step for the budget's timing, as the loop runs it; ``sync``: then wait for the device."""
        logged = self.objective.train_step(self.micro_batches(batches, step))
        for scheduler in self.objective.lr_schedulers.values():
            scheduler.step()
        if sync:
            float(next(iter(logged.values())))

    def make_plan(self, stored: dict | None) -> RunPlan:
        """The run's plan, the main process's broadcast to all. The epochs between validations and grids come
        from a checkpoint's plan when resuming, else from timing them (time_off_clock)."""
        from smallgen.budget import REPLANS, OffClockPlan, evaluation_every

        args = self.args
        steps_per_epoch, steps, epochs = step_counts(len(self.feeder), self.accumulation, args.max_train_steps,
                                                     args.num_epochs, self.max_train_steps)
        validates = self.validation_images is not None and bool(self.objective.validation_names)
        self.timed_off_clock = stored is None
        off = (OffClockPlan(stored["grid_images"], stored["grid_every"], stored["validate_every"]) if stored
               else self.time_off_clock(epochs, validates))
        evaluate_every = (stored or {}).get("evaluate_every", 0)
        if self.scores is not None and not stored:
            self.evaluation_seconds = self.scores.seconds()  # the main process's estimate: the plan is its
            evaluate_every = evaluation_every(steps, args.evaluate_every, args.num_evaluations,
                                              args.max_train_minutes, lambda: self.evaluation_seconds)
        replans = {key: (stored or {}).get(key, 0) for key in ("planned_steps", "replan_every", "replanned_at",
                                                              "position_micro")}
        if args.max_train_minutes and not stored:
            replans.update(planned_steps=steps, replan_every=math.ceil(steps / REPLANS))
        plan = RunPlan(steps_per_epoch, steps, epochs, args.logging_steps, args.checkpointing_steps or 0,
                       off.validate_every if validates else 0, off.grid_every, off.grid_images, evaluate_every,
                       **replans)
        return shared_plan(self.accelerator, plan)

    def time_off_clock(self, epochs: int, validates: bool):
        """Time a validation pass (the slowest process's) and a round of grids (the main process's: it alone
        draws them), and fit them to the budget's shares (budget.plan_off_clock)."""
        from smallgen import budget

        args, accelerator = self.args, self.accelerator
        if validates:
            start = time.perf_counter()
            self.validate()
            self.validation_seconds = slowest(accelerator, time.perf_counter() - start)
        timed = {}

        def round_seconds(images: int) -> float:
            if images not in timed:
                timed[images] = self.objective.grid_seconds(images) if accelerator.is_main_process else 0.0
            return timed[images]

        off = budget.plan_off_clock(epochs, args.max_train_minutes, round_seconds, self.validation_seconds or 0.0,
                                    args.num_sample_images, args.save_images_epochs)
        self.grid_seconds = round_seconds(off.grid_images)
        return off

    def off_clock_summary(self) -> str:
        """What the run will spend outside its training steps, said before training starts (a resumed run
        follows its stored plan untimed: rounds only)."""
        plan, first_epoch = self.plan, self.global_step // self.plan.steps_per_epoch
        grid_rounds, validations = plan.rounds(first_epoch, plan.grid_every), plan.rounds(first_epoch, plan.validate_every)
        evaluations = plan.evaluations(self.global_step)
        scores = f"; scores of {self.scores.description} x {evaluations}" if self.scores is not None else ""
        if not self.timed_off_clock:
            return (f"off the clock (as planned before the run; from here): sample grids of {plan.grid_images} images "
                    f"x {grid_rounds}; validation x {validations}{scores}")
        grids = f"sample grids of {plan.grid_images} images {self.grid_seconds:.1f} s a round x {grid_rounds}"
        validation, total = "no validation", self.grid_seconds * grid_rounds
        if self.validation_seconds is not None:
            validation = f"validation {self.validation_seconds:.1f} s x {validations}"
            total += self.validation_seconds * validations
        if self.scores is not None:
            scores = f"; scores of {self.scores.description} {self.evaluation_seconds:.1f} s x {evaluations}"
            total += self.evaluation_seconds * evaluations
        about = f"{total:.0f} s" if total < 120 else f"{total / 60:.1f} min"
        return (f"off the clock (timed before training): {grids}; {validation}{scores}; about {about}, besides "
                "checkpoints and the export")

    def finished_already(self) -> dict:
        """Resuming at or past the last step: no step, and an existing export is left as it is."""
        args, say = self.args, self.accelerator.print
        say(f"{self.resume_path} is at step {self.global_step} of {self.max_train_steps}: nothing to train")
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

        self.progress_bar = tqdm(total=self.plan.max_train_steps, initial=self.global_step, desc="training",
                                 unit="step", disable=not accelerator.is_local_main_process, dynamic_ncols=True)
        self.sums, self.count = {}, 0
        self.run_start = time.perf_counter() - self.elapsed_before
        self.pace_mark = (self.global_step, self.clock_seconds)  # where the next re-plan measures the pace from
        self.interval_start, self.images_in_interval = time.perf_counter(), 0

    # ------------------------------------------------------------------ steps

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
        self.progress_bar.update(1)
        self.clock_seconds += time.perf_counter() - started

    def stop_for_signal(self, stop: StopSignals, epoch: int, saved: bool) -> None:
        if not saved:
            self.save(epoch)
        self.progress_bar.close()
        raise TrainingInterrupted(
            f"stopped by {stop.name()} after step {self.global_step}; the checkpoint is {self.last_checkpoint}. "
            f"Resume with the same command and --resume_from_checkpoint latest", stop.signum)

    def identity(self) -> dict:
        """What a checkpoint must have been written by to be resumed here."""
        return {"model_type": self.objective.name, "resolution": self.data_args.resolution}

    def save(self, epoch: int) -> None:
        """A checkpoint of this step, its weights checked finite first."""
        self.check_weights_finite()
        info = {"global_step": self.global_step, "epoch": epoch, "seed": self.args.seed,
                "max_train_steps": self.plan.max_train_steps, "plan": self.plan.as_dict(),
                "clock_seconds": self.clock_seconds, "elapsed_seconds": time.perf_counter() - self.run_start,
                "best": self.best, **self.identity()}
        self.last_checkpoint = save_checkpoint(self.objective, self.accelerator, self.args.output_dir,
                                               self.global_step, self.args.checkpoints_total_limit, info)

    def prune_bests(self) -> None:
        """--keep_best: keep the best folders of the run's best and of those the checkpoints name (main process)."""
        if self.args.keep_best and self.accelerator.is_main_process:
            named = {checkpoint_info(path).get("best", {}).get("step") for path in list_checkpoints(self.args.output_dir)}
            remove_bests_except(self.args.output_dir, named | {self.best.get("step")})

    def log_training(self, epoch: int) -> None:
        """Read the summed losses (the one host sync), check them, log them, reset the sums."""
        accelerator = self.accelerator
        self.last_train = {k: accelerator.reduce(v / self.count, "mean").item() for k, v in self.sums.items()}
        self.check_finite(self.last_train)
        lrs = {name: s.get_last_lr()[0] for name, s in self.objective.lr_schedulers.items()}
        record = {"step": self.global_step, "epoch": epoch, **self.last_train, "lr": next(iter(lrs.values())),
                  **({f"lr_{name}": lr for name, lr in lrs.items()} if len(lrs) > 1 else {}),
                  "images_per_second": self.images_in_interval / (time.perf_counter() - self.interval_start)}
        self.progress_bar.set_postfix({k: f"{v:.4g}" for k, v in self.last_train.items()}, refresh=False)
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
        if self.progress_bar is not None:
            self.progress_bar.close()
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

    def log_epoch(self, epoch: int, validated: dict) -> None:
        """The epoch's record in metrics.jsonl (and the trackers)."""
        self.metrics.log({"step": self.global_step, "epoch": epoch, **validated,
                          "elapsed_seconds": time.perf_counter() - self.run_start})

    def draw_loss_curves(self) -> None:
        """loss_curves.png from every record so far (main process)."""
        from smallgen.plots import plot_loss_curves

        with self.writing("the loss curves"):
            plot_loss_curves(self.metrics.read(), os.path.join(self.args.output_dir, "loss_curves.png"),
                             title=f"{self.objective.name} training and validation losses")

    @torch.no_grad()
    def validate(self, check: bool = False) -> dict[str, float]:
        """Batch-size-weighted mean of the objective's validation losses; batch b seeded by b. With ``check``:
        kept as the run's last validation and checked finite."""
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
        losses = {k: (stacked[i] / stacked[-1].clamp(min=1)).item() for i, k in enumerate(names)}
        if check:
            self.last_val = losses
            self.check_finite(losses)
        return losses

    def evaluate(self) -> None:
        """Scores while training (smallgen/training_scores.py): logged, said, and drawn as a curve."""
        start = time.perf_counter()
        scores = self.scores.score()
        self.scoring_seconds += time.perf_counter() - start
        self.last_scores = {"step": self.global_step, **scores}
        self.metrics.log({"step": self.global_step, **{f"evaluation/{k}": v for k, v in scores.items()}})
        score = self.args.keep_best
        if score and (not self.best or scores[score] < self.best[score]):  # the same scores on every process
            self.best = {"step": self.global_step, score: scores[score]}
            if self.accelerator.is_main_process:
                with self.writing(f"the best pipeline so far (step {self.global_step})"):
                    save_best(self.objective, self.args.output_dir, self.global_step)
            self.prune_bests()
        if self.accelerator.is_main_process:
            from smallgen.plots import plot_training_scores

            self.progress_bar.write(f"step {self.global_step}: KID {scores['kid']:.4g} ± {scores['kid_std']:.2g}, "
                                    f"FID {scores['fid']:.4g}, precision {scores['precision']:.3f}, "
                                    f"recall {scores['recall']:.3f}")
            with self.writing("the scores curve"):
                plot_training_scores(self.metrics.read(), os.path.join(self.args.output_dir, SCORES_FIGURE),
                                     title=f"{self.objective.name}: {self.scores.description}")

    def snapshots_posthoc(self, step: int) -> bool:
        if self.objective.posthoc is None:
            return False
        every = self.args.posthoc_ema_every or math.ceil(self.plan.schedule_steps / POSTHOC_SNAPSHOTS)
        return step % every == 0 or step == self.plan.max_train_steps

    def save_posthoc_snapshot(self) -> None:
        if self.accelerator.is_main_process:
            with self.writing("a post-hoc EMA snapshot"):
                save_snapshot(self.objective.posthoc, self.args.output_dir, self.global_step)

    def save_sample_grids(self, tag: str) -> None:
        from smallgen.plots import save_image_grid

        self.sample_paths = []
        for name, grid in self.objective.sample_grids(self.plan.grid_images, self.args.seed).items():
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
            results.update(max_train_minutes=self.args.max_train_minutes, timing_seconds=self.timing_seconds,
                           planned_steps=self.plan.schedule_steps)
        if self.best:
            results.update({f"best_{k}": v for k, v in self.best.items()})
        if self.last_scores:
            results.update({f"evaluation_{k}": v for k, v in self.last_scores.items()},
                           evaluation_seconds=self.scoring_seconds, evaluation_samples=self.scores.description)
        from smallgen.budget import process_seconds

        results["wall_seconds"] = process_seconds()  # since the process started, until the export
        accelerator.print(f"{self.global_step} steps, {images_seen} images in {self.clock_seconds / 60:.2f} min of "
                          f"training steps; {results['training_seconds'] / 60:.2f} min with validation, grids "
                          f"and checkpoints")
        if results.get("planned_steps", self.global_step) != self.global_step:
            accelerator.print(f"steps of the time budget: {results['planned_steps']} planned before the run, "
                              f"{self.global_step} at the loop's own pace")
        if accelerator.is_main_process:
            from smallgen.export import export_run

            with self.writing(f"the pipeline to {self.args.output_dir}"):
                export_run(self.objective, self.data_args, self.args, results, self.sample_paths, accelerator.print,
                           figures=[SCORES_FIGURE] if self.last_scores else [], best_step=self.best.get("step"))
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return results


def train(data_args, model_args, args) -> dict:
    """Check everything, then train, export the pipeline to ``args.output_dir`` and return the metrics."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration, set_seed

    from smallgen.objectives import objective_class

    resuming = args.resume_from_checkpoint is not None
    objective_cls = objective_class(model_args.model_type, model_args.class_conditional)
    objective_cls.check_arguments(data_args, model_args, args)  # config errors first, checked once
    if args.posthoc_ema and not objective_cls.tracks_posthoc_ema:
        raise ConfigError(f"--posthoc_ema: --model_type {model_args.model_type} keeps no EMA (the UNet model types do)")
    check_output_dir(args.output_dir, resuming, args.overwrite_output_dir)
    resume_path = resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision, log_with=None if args.logger == "none" else args.logger,
        kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=args.ddp_timeout))],
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
    objective = objective_cls(data_args, model_args, args, labels)
    feeder = ImageFeeder(data.train, data.image_column, data_args, args, accelerator)
    if labels is not None:
        feeder.use_labels(labels.values)
    validation_images = None
    if data.validation is not None and len(data.validation):
        validation_images = decode_to_uint8(data.validation, data.image_column, data_args,
                                            desc="loading validation images", show_progress=accelerator.is_main_process)
        if feeder.on_device:
            validation_images = validation_images.to(accelerator.device)  # moved once, not every epoch
    scores = None
    if args.evaluate_num_samples:  # weights and reference found here, or refused before anything is written
        from smallgen.training_scores import TrainingScores

        scores = TrainingScores(objective, accelerator, data_args, args)
    trainer = Trainer(objective, accelerator, feeder, (validation_images, validation_labels), resume_path,
                      data_args, model_args, args, scores)
    lock = RunLock(args.output_dir)
    try:
        if accelerator.is_main_process:  # everything above was checked: only now may the folder change
            lock.acquire()
            prepare_output_dir(args.output_dir, args.logging_dir, resuming, args.overwrite_output_dir)
        accelerator.wait_for_everyone()
        with peers_named(accelerator, lambda: trainer.global_step, args.ddp_timeout):
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
