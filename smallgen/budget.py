"""``--max_train_minutes``: a time budget turned into a number of optimizer steps.

The first count comes from timing a few real steps on the real objective; afterwards every weight
and every optimizer, EMA, lr-schedule and grad-scaler state is put back, so a run whose count
stands equals ``--max_train_steps N`` bit for bit. Then REPLANS times over the run the count is
re-planned from the loop's own pace (the slowest process's, the same count on every process), and
the lr schedules stretch what is left of them over the steps left (``RunPlan.schedule_position``).
Every count is stored in each checkpoint with the schedules' position: a resumed run goes on from it.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

from smallgen.checkpoints import stateful_parts

DEFAULT_GRID_EPOCHS = 10  # --save_images_epochs unset, without a time budget
DEFAULT_GRID_IMAGES, MIN_GRID_IMAGES = 16, 4  # --num_sample_images unset
GRID_SHARE = 0.1  # with a time budget, sample grids take about this share of it (the last round always)
VALIDATION_SHARE = 0.05  # and validation this share (the last epoch always)
EVALUATION_SHARE = 0.15  # and scores while training this share (the last step always)
DEFAULT_EVALUATIONS = 10  # scores while training without a budget, --evaluate_every and --num_evaluations
WARM_UP_STEPS = 10  # compilation, allocator warm-up, cuDNN autotuning: not representative
PROBE_STEPS = 3  # timed to choose how many steps fill the timing's share
TIMED_WINDOWS = 5  # the timing's share split into windows: their median is the step time
REPLANS = 20  # then the count is re-planned this many times over the run, from the loop's own pace
MAX_TIMING_SECONDS = 60.0
TIMING_SHARE = 0.1  # at most this share of the budget is spent timing (off the clock)


def capture_state(objective, accelerator) -> dict:
    """Deep copies of the networks' and every stateful part's state."""
    saved = {f"network.{name}": accelerator.unwrap_model(net).state_dict() for name, net in objective.networks.items()}
    saved.update({name: part.state_dict() for name, part in stateful_parts(objective, accelerator).items()})
    return copy.deepcopy(saved)


def restore_state(objective, accelerator, saved: dict) -> None:
    for name, net in objective.networks.items():
        accelerator.unwrap_model(net).load_state_dict(saved[f"network.{name}"])
    for name, part in stateful_parts(objective, accelerator).items():
        part.load_state_dict(copy.deepcopy(saved[name]))


def seconds_per_step(run_step, budget_seconds: float, slowest=lambda seconds: seconds) -> float:
    """Seconds a step takes, from ``run_step(i, sync)`` after WARM_UP_STEPS: the median of TIMED_WINDOWS
    windows' means, which together fill a small share of the budget (at least two steps each).

    Steps are timed as the loop runs them: ``sync`` (a host sync) only on the last step of a window,
    never after each step (a sync per step timed 5-8% slow under ``accelerate launch`` on CPU). The
    median, not the mean: a burst of other work on the machine during the timing would otherwise fix
    too few steps for the whole run. ``slowest(seconds)`` returns the largest value over all processes:
    every process must run the same number of steps (each step synchronises gradients), so the counts
    come from the slowest process's probe, and each window's time is the slowest process's.
    """
    def window(first: int, count: int) -> float:
        start = time.perf_counter()
        for i in range(first, first + count):
            run_step(i, i == first + count - 1)
        return slowest(time.perf_counter() - start) / count

    window(0, WARM_UP_STEPS)
    probe = max(window(WARM_UP_STEPS, PROBE_STEPS), 1e-6)
    limit = min(MAX_TIMING_SECONDS, TIMING_SHARE * budget_seconds)
    count = min(max(2, int(limit / probe / TIMED_WINDOWS)), 20_000)
    first = WARM_UP_STEPS + PROBE_STEPS
    means = sorted(window(first + w * count, count) for w in range(TIMED_WINDOWS))
    return means[TIMED_WINDOWS // 2]


def steps_in_budget(minutes: float, step_seconds: float, cap: int | None) -> int:
    """Whole steps that fit in ``minutes`` (at least one), capped by ``--max_train_steps``."""
    steps = max(1, int(minutes * 60 / step_seconds))
    return min(steps, cap) if cap else steps


def replanned_steps(global_step: int, clock_seconds: float, recent_seconds: float, recent_steps: int,
                    budget_seconds: float, cap: int | None) -> int:
    """Whole steps that fill the budget from where a run stands: ``global_step`` steps done in
    ``clock_seconds``, the last ``recent_steps`` of them in ``recent_seconds`` (the pace now: this
    machine's speed drifts by 10% within minutes, which a count fixed before the run cannot follow).
    At least one more step: the lr schedules reach their end at the last step, not before it."""
    pace = max(recent_seconds / max(recent_steps, 1), 1e-9)
    steps = global_step + max(1, int((budget_seconds - clock_seconds) / pace))
    return min(steps, cap) if cap else steps


@dataclass
class OffClockPlan:
    """How much of the work outside training steps a run does: images per grid, and the epochs between
    rounds of grids and between validations (the last epoch always has both)."""

    grid_images: int
    grid_every: int
    validate_every: int


def plan_off_clock(num_epochs: int, budget_minutes: float | None, round_seconds, validation_seconds: float,
                   grid_images: int | None, grid_every: int | None) -> OffClockPlan:
    """Flags given are kept. Unset, without a time budget: grids of 16 images every 10 epochs, validation
    every epoch. With a budget, the work off the clock stays near a share of it: grids of as many images
    (16 down to 4) and as many rounds as fit in GRID_SHARE, validations in VALIDATION_SHARE.
    ``round_seconds(images)`` is what one round of grids of that many images costs."""
    if not budget_minutes:
        return OffClockPlan(grid_images or DEFAULT_GRID_IMAGES, grid_every or DEFAULT_GRID_EPOCHS, 1)
    seconds = budget_minutes * 60
    images = grid_images or DEFAULT_GRID_IMAGES
    if grid_images is None and round_seconds(images) > GRID_SHARE * seconds:
        images = max(MIN_GRID_IMAGES, int(images * GRID_SHARE * seconds / round_seconds(images)))
    rounds = int(GRID_SHARE * seconds / max(round_seconds(images), 1e-9))
    every = grid_every or (num_epochs + 1 if rounds <= 1 else max(1, math.ceil(num_epochs / rounds)))
    validations = int(VALIDATION_SHARE * seconds / max(validation_seconds, 1e-9))
    validate_every = 1 if validations >= num_epochs else (num_epochs + 1 if validations <= 1
                                                          else math.ceil(num_epochs / validations))
    return OffClockPlan(images, every, validate_every)


def evaluation_every(steps: int, every: int | None, count: int | None, budget_minutes: float | None,
                     evaluation_seconds) -> int:
    """Optimizer steps between scores while training: --evaluate_every; else --num_evaluations spread over
    the steps; else, with a budget, as many as fit in EVALUATION_SHARE of it (at least the last one), and
    DEFAULT_EVALUATIONS without. ``evaluation_seconds()`` times one evaluation (called only if needed)."""
    if every:
        return every
    if not count:
        count = DEFAULT_EVALUATIONS
        if budget_minutes:
            count = max(1, int(EVALUATION_SHARE * budget_minutes * 60 / max(evaluation_seconds(), 1e-9)))
    return math.ceil(steps / min(count, steps))


def process_seconds() -> float:
    """Wall seconds since this process started (imports and data loading included)."""
    import psutil

    return time.time() - psutil.Process().create_time()

