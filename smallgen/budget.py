"""``--max_train_minutes``: a time budget turned into a fixed number of optimizer steps.

A fixed count keeps runs reproducible: the lr schedule spans exactly those steps, the count is
stored in every checkpoint, and a resumed run is exact. The count comes from timing a few real
steps on the real objective; afterwards every weight and every optimizer, EMA, lr-schedule and
grad-scaler state is put back, so the run that follows equals ``--max_train_steps N`` bit for bit.
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
UNTIMED_STEPS = 5  # compilation, allocator warm-up, cuDNN autotuning: not representative
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
    """Mean wall time of ``run_step(i)`` (which must end with a host sync) after UNTIMED_STEPS steps,
    over enough steps to fill a small share of the budget (at least two).

    ``slowest(seconds)`` returns the largest value over all processes: every process must run the
    same number of steps (each step synchronises gradients), so the count comes from the slowest
    process's first timed step, and the result is the slowest process's mean.
    """
    limit = min(MAX_TIMING_SECONDS, TIMING_SHARE * budget_seconds)
    for i in range(UNTIMED_STEPS):
        run_step(i)
    start = time.perf_counter()
    run_step(UNTIMED_STEPS)
    first = slowest(time.perf_counter() - start)
    count = min(max(2, int(limit / max(first, 1e-6))), 100_000)
    start = time.perf_counter()
    for i in range(count):
        run_step(UNTIMED_STEPS + 1 + i)
    return slowest((time.perf_counter() - start) / count)


def steps_in_budget(minutes: float, step_seconds: float, cap: int | None) -> int:
    """Whole steps that fit in ``minutes`` (at least one), capped by ``--max_train_steps``."""
    steps = max(1, int(minutes * 60 / step_seconds))
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


def process_seconds() -> float:
    """Wall seconds since this process started (imports and data loading included)."""
    import psutil

    return time.time() - psutil.Process().create_time()

