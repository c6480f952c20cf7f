"""The one metrics log of a run: ``metrics.jsonl`` (a JSON record per line) plus the trackers.

The main process appends; on resume the records after the checkpoint's step are cut, so a
resumed run's log reads as if it had never stopped. TensorBoard (or wandb) gets the same numbers
and the sample grids.
"""

from __future__ import annotations

import json
import os

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str) -> list[dict]:
    """Every record of a ``metrics.jsonl`` (an empty list when there is none yet)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsLog:
    def __init__(self, output_dir: str, accelerator):
        self.path = os.path.join(output_dir, METRICS_FILE)
        self.accelerator = accelerator

    def cut_back(self, step: int) -> None:
        """Forget what an earlier attempt logged after ``step`` (main process only)."""
        if self.accelerator.is_main_process:
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
            with open(self.path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)

    def log(self, record: dict) -> None:
        """Append ``record`` (which holds its ``step``) to the file and send it to the trackers."""
        self.accelerator.log({k: v for k, v in record.items() if k != "step" and v is not None},
                             step=record["step"])
        if self.accelerator.is_main_process:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        return read_metrics(self.path)

    def log_images(self, tag: str, images, step: int) -> None:
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_images(tag, images, step, dataformats="NCHW")
