"""The quick start's step time on the CPU while other processes keep cores busy (issue #27).

    python benchmarks/cpu_contention.py --busy 0 1 2 --threads default 1 --output_json results/cpu/contention.json

For each number of competing busy processes (each spins one core in pure Python) and each thread
setting (``default``: the trainer's own choice, the cores this process may use; or a number, passed
as ``--cpu_threads``), the quick-start recipe is started with a short time budget and the step time
its timed warm-up measures is read from its output ("N ms a step"). Grids and validation are cut
to a minimum: only the training step is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def spin() -> None:
    while True:
        pass


def step_milliseconds(threads: str, output_dir: str) -> float:
    """The quick start's timed warm-up, in ms a step (its own measurement)."""
    command = [sys.executable, str(ROOT / "train_unconditional.py"), "--config", str(ROOT / "configs/quickstart.yaml"),
               "--output_dir", output_dir, "--max_train_minutes", "0.25", "--num_sample_images", "1",
               "--grid_num_inference_steps", "1", "--max_validation_samples", "8", "--logger", "none"]
    if threads != "default":
        command += ["--cpu_threads", threads]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    found = re.search(r"\(([\d.]+) ms a step", result.stdout)
    if result.returncode != 0 or not found:
        raise SystemExit(f"the quick start failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return float(found.group(1))


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2], help="Competing busy processes.")
    parser.add_argument("--threads", nargs="+", default=["default", "1"], help="'default' or a thread count.")
    parser.add_argument("--output_json")
    args = parser.parse_args(argv)
    import multiprocessing

    rows = []
    for busy in args.busy:
        spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(busy)]
        for process in spinners:
            process.start()
        time.sleep(1)
        try:
            for threads in args.threads:
                with tempfile.TemporaryDirectory() as folder:
                    ms = step_milliseconds(threads, os.path.join(folder, "run"))
                rows.append({"busy_processes": busy, "threads": threads, "ms_per_step": ms})
                print(f"busy {busy}, threads {threads}: {ms:.1f} ms a step", flush=True)
        finally:
            for process in spinners:
                process.terminate()
    if args.output_json:
        Path(args.output_json).write_text(json.dumps({"cores": os.cpu_count(), "rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
