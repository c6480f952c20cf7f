"""How a run's processes stay in step: every process makes the same collective calls in the same order.

* Timings that shape the run are the slowest process's (``slowest``), and the plan itself is the
  main process's, broadcast (``shared_plan``): no process decides from its own clock.
* A SIGTERM or SIGINT reaching any process stops every process after the same step: each step
  all-reduces the signal flag (``StopSignals``).
* A process left waiting in a collective (a peer stuck or gone) gives up after ``--ddp_timeout``
  seconds with a message naming the step (``peers_named``), instead of torch's 30-minute default.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal

import torch

from smallgen.errors import UserError
from smallgen.plan import RunPlan

# what a collective that timed out or lost its peer raises (gloo's messages; NCCL aborts the process itself)
PEER_FAILURE = re.compile(r"timed out|timeout|connection (closed|reset)|peer|gloo|nccl", re.IGNORECASE)


class TrainingInterrupted(UserError):
    """SIGTERM or SIGINT: the run stopped after a checkpoint; exits 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class PeersLost(UserError):
    """A collective call timed out or its peer process went away."""


def slowest(accelerator, seconds: float) -> float:
    """The largest of ``seconds`` over the processes (the same on every process)."""
    if accelerator.num_processes == 1:
        return seconds
    return accelerator.reduce(torch.tensor(seconds, device=accelerator.device), "max").item()


def shared_plan(accelerator, plan: RunPlan) -> RunPlan:
    """The main process's plan, on every process (broadcast as integers: nothing is unpickled)."""
    if accelerator.num_processes == 1:
        return plan
    from accelerate.utils import broadcast

    values = torch.tensor(plan.as_ints(), dtype=torch.int64, device=accelerator.device)
    return RunPlan.from_ints(broadcast(values, from_process=0).tolist())


class StopSignals:
    """Within ``with``: the first SIGTERM/SIGINT asks for a stop after the current step (``requested``
    answers the same on every process); a second one exits at once (the last complete checkpoint stays
    the latest; a save in progress is only a .tmp folder)."""

    def __init__(self, accelerator):
        self.accelerator, self.signum, self.previous = accelerator, None, {}

    def __enter__(self) -> "StopSignals":
        self.previous = {s: signal.signal(s, self.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def on_signal(self, signum, frame) -> None:
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum

    def requested(self) -> bool:
        """Whether any process got a signal (one tiny all-reduce per step with several processes)."""
        if self.accelerator.num_processes == 1:
            return self.signum is not None
        flag = torch.tensor(float(self.signum or 0), device=self.accelerator.device)
        signum = int(self.accelerator.reduce(flag, "max").item())
        self.signum = self.signum or (signum or None)
        return signum > 0

    def name(self) -> str:
        return signal.Signals(self.signum).name


@contextlib.contextmanager
def peers_named(accelerator, step, timeout: float):
    """A collective that timed out or lost its peer becomes PeersLost naming ``step()``, this process and
    the plan every process should have followed."""
    try:
        yield
    except RuntimeError as exc:
        if accelerator.num_processes == 1 or not PEER_FAILURE.search(str(exc)):
            raise
        first_line = str(exc).strip().splitlines()[0][:300]
        raise PeersLost(f"process {accelerator.process_index} of {accelerator.num_processes} gave up waiting for the "
                        f"others at step {step()} ({first_line}). Each process must follow the plan printed at the "
                        f"start; a process may be stuck or gone. --ddp_timeout ({timeout:g} s) sets how long a "
                        "process waits.") from None
