"""benchmarks/train_throughput.py runs on the CPU."""

import json

import pytest

from tests.helpers import (
    script,
)


def test_throughput_benchmark_runs_on_cpu(tmp_path):
    result = script("benchmarks/train_throughput.py", "--model", "configs/models/unet-tiny.json", "--batch_size", "2",
                     "--steps", "1", "--warmup", "1", "--output_json", tmp_path / "b.json")
    assert result.returncode == 0, result.stderr[-2000:]
    numbers = json.loads((tmp_path / "b.json").read_text())
    assert numbers["ours_images_per_second"] > 0 and numbers["diffusers_example_images_per_second"] > 0
    assert numbers["ours_real_loop_images_per_second"] > 0
    assert numbers["ratio"] == pytest.approx(numbers["ours_images_per_second"] / numbers["diffusers_example_images_per_second"])
