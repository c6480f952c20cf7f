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

from smallgen.checkpoints import stateful_parts

DEFAULT_GRID_EPOCHS = 10  # --save_images_epochs without a time budget
GRID_SHARE = 0.1  # with a time budget, sample grids take at most this share of it (the last round always)
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


def grid_interval(num_epochs: int, round_seconds: float, budget_minutes: float | None) -> int:
    """Epochs between rounds of sample grids when --save_images_epochs is unset: every 10 without a
    time budget; with one, as many rounds as fit in a tenth of it (the round at the end is always drawn)."""
    if not budget_minutes:
        return DEFAULT_GRID_EPOCHS
    rounds = int(GRID_SHARE * budget_minutes * 60 / max(round_seconds, 1e-9))
    return num_epochs + 1 if rounds <= 1 else max(1, math.ceil(num_epochs / rounds))


def grid_rounds(first_epoch: int, num_epochs: int, every: int) -> int:
    """Rounds of grids drawn at the end of epochs first_epoch ... num_epochs - 1 (the last one included)."""
    return len({e for e in range(first_epoch, num_epochs) if (e + 1) % every == 0} | {num_epochs - 1})


def off_clock_summary(grid_seconds: float, rounds: int, num_images: int, validation_seconds: float | None,
                      epochs: int) -> str:
    """What the run will spend outside its training steps, said before training starts."""
    grids = f"sample grids of {num_images} images {grid_seconds:.1f} s a round x {rounds}"
    validation = ("no validation" if validation_seconds is None
                  else f"validation {validation_seconds:.1f} s x {epochs} epochs")
    total = grid_seconds * rounds + (validation_seconds or 0.0) * epochs
    about = f"{total:.0f} s" if total < 120 else f"{total / 60:.1f} min"
    return f"off the clock (timed before training): {grids}; {validation}; about {about}, besides checkpoints and the export"


def process_seconds() -> float:
    """Wall seconds since this process started (imports and data loading included)."""
    import psutil

    return time.time() - psutil.Process().create_time()

