"""What a run will do, decided once before its first step: the ``RunPlan``.

Every choice that decides which collective calls a process makes (the step count, the epochs, the
epochs that validate and draw grids, the steps that log and checkpoint) is a field here. The plan
is made from inputs every process agrees on (the slowest process's timings), then the main
process's plan is broadcast (``smallgen.processes.shared_plan``), printed before training and
stored in every checkpoint, so a resumed run follows it too. Nothing in the loop reads its own
clock to decide what to do next: a time budget's count is re-planned only at the plan's re-plan
steps, from the slowest process's timings (reduced), and broadcast again; a stop on a signal is
agreed by an all-reduce at every step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from smallgen.errors import ConfigError


@dataclass(frozen=True)
class RunPlan:
    steps_per_epoch: int
    max_train_steps: int
    num_epochs: int
    logging_steps: int
    checkpointing_steps: int  # 0: no checkpoints
    validate_every: int  # epochs between validations (0: the run has no validation)
    grid_every: int  # epochs between rounds of sample grids
    grid_images: int  # images per grid
    evaluate_every: int = 0  # optimizer steps between scores while training (0: none; the last step always)
    # a time budget's count follows the steps' own clock: re-planned every replan_every steps (0: never)
    planned_steps: int = 0  # the count the lr schedules were made for (0: max_train_steps)
    replan_every: int = 0
    replanned_at: int = 0  # the step of the last re-plan that changed the count,
    position_micro: int = 0  # and where the lr schedules stood then, in millionths of a step

    def last_epoch(self, epoch: int, global_step: int) -> bool:
        return epoch == self.num_epochs - 1 or global_step >= self.max_train_steps

    def logs(self, global_step: int) -> bool:
        return global_step % self.logging_steps == 0 or global_step == self.max_train_steps

    def checkpoints(self, global_step: int) -> bool:
        return bool(self.checkpointing_steps) and global_step % self.checkpointing_steps == 0

    def validates(self, epoch: int, global_step: int) -> bool:
        every = self.validate_every
        return bool(every) and ((epoch + 1) % every == 0 or self.last_epoch(epoch, global_step))

    def draws_grids(self, epoch: int, global_step: int) -> bool:
        return (epoch + 1) % self.grid_every == 0 or self.last_epoch(epoch, global_step)

    def evaluates(self, global_step: int) -> bool:
        every = self.evaluate_every
        return bool(every) and (global_step % every == 0 or global_step == self.max_train_steps)

    @property
    def schedule_steps(self) -> int:
        """The count the lr schedules were made for (a plan stored before re-plans: its count)."""
        return self.planned_steps or self.max_train_steps

    def replans(self, global_step: int) -> bool:
        return bool(self.replan_every) and global_step % self.replan_every == 0 and global_step < self.max_train_steps

    def schedule_position(self, global_step: int) -> float:
        """Where the lr schedules, made for ``planned_steps``, stand at ``global_step``. After a re-plan the
        steps left are stretched over what was left of the schedules: the lr goes on from where it was and
        ends where it would have (0 for cosine). Without one, the step itself (bit for bit)."""
        planned = self.schedule_steps
        if self.max_train_steps == planned and self.position_micro == self.replanned_at * 10**6:
            return global_step
        start, left = self.position_micro / 10**6, self.max_train_steps - self.replanned_at
        return planned if left <= 0 else start + (global_step - self.replanned_at) * (planned - start) / left

    def replanned(self, global_step: int, steps: int) -> "RunPlan":
        """This plan with ``steps`` optimizer steps in all, re-planned at ``global_step``."""
        if steps == self.max_train_steps:
            return self
        return dataclasses.replace(self, max_train_steps=steps, num_epochs=math.ceil(steps / self.steps_per_epoch),
                                   replanned_at=global_step,
                                   position_micro=round(self.schedule_position(global_step) * 10**6))

    def evaluations(self, first_step: int) -> int:
        """Scores while training after ``first_step``."""
        return sum(self.evaluates(s) for s in range(first_step + 1, self.max_train_steps + 1))

    def rounds(self, first_epoch: int, every: int) -> int:
        return rounds(first_epoch, self.num_epochs, every)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def as_ints(self) -> list[int]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]

    @classmethod
    def from_ints(cls, values) -> "RunPlan":
        return cls(*(int(v) for v in values))

    def summary(self, process: int = 0, num_processes: int = 1) -> str:
        who = f"process {process} of {num_processes}, " if num_processes > 1 else ""
        validation = f"validation every {self.validate_every} epochs" if self.validate_every else "no validation"
        checkpoints = (f"a checkpoint every {self.checkpointing_steps} steps" if self.checkpointing_steps
                       else "no checkpoints")
        scores = f"; scores every {self.evaluate_every} steps and at the last" if self.evaluate_every else ""
        return (f"plan ({who}the same on every process, stored in each checkpoint): {self.max_train_steps} optimizer steps, "
                f"{self.steps_per_epoch} per epoch, {self.num_epochs} epochs; logs every {self.logging_steps} steps; "
                f"{checkpoints}; {validation}; grids of {self.grid_images} images every {self.grid_every} epochs "
                f"(the last epoch always validates and draws grids){scores}")


def rounds(first_epoch: int, num_epochs: int, every: int) -> int:
    """How many epochs from ``first_epoch`` on end a multiple of ``every`` epochs, or are the last (0: none)."""
    if not every:
        return 0
    return len({e for e in range(first_epoch, num_epochs) if (e + 1) % every == 0} | {num_epochs - 1})


def step_counts(num_batches: int, accumulation: int, max_train_steps: int | None, num_epochs: int,
                fixed_steps: int | None = None) -> tuple[int, int, int]:
    """(steps per epoch, optimizer steps, epochs) from the flags; ``fixed_steps`` is what a time budget
    came to (--max_train_minutes)."""
    steps_per_epoch = num_batches // accumulation
    if steps_per_epoch == 0:
        raise ConfigError(f"one epoch holds {num_batches} batches, fewer than "
                          f"--gradient_accumulation_steps={accumulation}")
    steps = fixed_steps or max_train_steps or num_epochs * steps_per_epoch
    return steps_per_epoch, steps, math.ceil(steps / steps_per_epoch)
