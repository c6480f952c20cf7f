"""What a run checks about the installation and the machine before it starts.

* A torchvision built for another torch (PyPI's CUDA torchvision beside a CPU-only torch, or another
  version) fails deep inside diffusers' and transformers' imports with ``operator torchvision::nms
  does not exist``; checked first, it is one line that says how to install a matching pair.
* On the CPU, a run takes the cores that other processes leave free: threads competing with a busy
  process for the same core made the quick start's steps 2.8 times slower (docs/benchmarks.md).
"""

import os
import time

from smallgen.errors import UserError, exit_on_user_error

CPU_INSTALL = "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu"


def check_torchvision() -> None:
    """UserError if torchvision cannot load beside the installed torch."""
    try:
        import torchvision  # noqa: F401
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        import torch

        raise UserError(f"torchvision was not built for the installed torch {torch.__version__} ({exc}). Install "
                        f"the two as a pair from one index, for a machine without a GPU: {CPU_INSTALL}") from None


def require_a_working_installation() -> None:
    """The scripts' first call: one 'error: ...' line and exit status 2 on a broken installation."""
    with exit_on_user_error():
        check_torchvision()


BUSY_CORES_VARIABLE = "SMALLGEN_BUSY_CORES"  # a stated load: the cores other work keeps busy, not measured


def busy_cores_elsewhere(seconds: float = 0.25) -> float:
    """Cores kept busy over ``seconds`` by processes outside this run: this process and, under a
    multi-process launch (WORLD_SIZE > 1), its launcher and the launcher's children, the other ranks,
    are left out (an unrelated job started from the same shell is not). SMALLGEN_BUSY_CORES states it
    instead (a machine whose load will change, or a test that must not depend on it)."""
    import psutil

    stated = os.environ.get(BUSY_CORES_VARIABLE)
    if stated is not None:
        try:
            return float(stated)
        except ValueError:
            raise UserError(f"{BUSY_CORES_VARIABLE}={stated!r} is not a number of cores") from None

    me = psutil.Process()
    family = {me.pid}
    parent = me.parent()
    if parent is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        family |= {parent.pid} | {child.pid for child in parent.children(recursive=True)}
    others = []
    for process in psutil.process_iter():
        if process.pid not in family:
            try:
                process.cpu_percent(None)  # the first call starts the process's count
                others.append(process)
            except psutil.Error:
                pass
    time.sleep(seconds)
    busy = 0.0
    for process in others:
        try:
            busy += process.cpu_percent(None)
        except psutil.Error:
            pass
    return busy / 100


def use_cpu_cores(accelerator, requested: int | None) -> None:
    """On the CPU, one thread per core that other processes leave free, shared among this machine's
    processes of the run (``accelerate launch`` alone would set OMP_NUM_THREADS=1, leaving cores idle);
    ``requested`` (--cpu_threads) overrides."""
    import torch

    if accelerator.device.type != "cpu":
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    busy = 0.0 if requested else busy_cores_elsewhere()
    threads = requested or max(1, (cores - round(busy)) // local_processes)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    accelerator.print(f"CPU: {torch.get_num_threads()} threads per process ({cores} cores, {busy:.1f} busy with "
                      f"other processes, {local_processes} processes here)")

