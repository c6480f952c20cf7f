"""benchmarks/gpu_suite.py without a GPU: the whole one-window protocol dry-run on the CPU with tiny
sizes (pack here, then every device call in order), so that no GPU call is the first to run a line."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SAMPLE_CIFAR10

CALL_LIMIT = 64 * 2**20


def tiny_sizes(speed_flags):
    return {"budget_minutes": 0.05, "num_samples": 12,
            "throughput_flags": ["--model", "configs/models/unet-tiny.json", "--batch_size", "2", "--steps", "1",
                                 "--warmup", "1"],
            "speed_flags": speed_flags,
            "time_to_fid_flags": ["--samplers", "edm-dpmsolver", "--sampler_steps", "2",
                                  "--train_flag=--train_batch_size=8", "--train_flag=--eval_batch_size=12",
                                  "--train_flag=--model_config_name_or_path=configs/models/unet-tiny.json"]}


def suite(step, tmp_path, speed_flags, *args, home="home", timeout=900):
    env = {**os.environ, "HOME": str(tmp_path / home), "OUT": str(tmp_path / f"out-{step}-{'-'.join(args)}"),
           "SUITE_STAGE": str(tmp_path / "stage-here"), "SUITE_SIZES": json.dumps(tiny_sizes(speed_flags)),
           "SMALLGEN_CACHE": str(tmp_path / home / "cache"), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "benchmarks/gpu_suite.py", step, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def tiny_cifar10(tmp_path):
    """40 images of the sample, in the hub's layout and schema (the real parquet: 114 MB)."""
    import datasets

    path = tmp_path / "tiny" / "train-00000-of-00001.parquet"
    datasets.load_dataset(str(SAMPLE_CIFAR10))["train"].select(range(40)).to_parquet(str(path))
    return path


def run_window(tmp_path, inception, speed_flags):
    """Pack, then every call of the plan in order; returns the plan and each call's output folder."""
    packed = suite("pack", tmp_path, speed_flags, "--data", str(tiny_cifar10(tmp_path)), "--weights",
                   inception.path, "--no_wheels")
    assert packed.returncode == 0, packed.stderr[-3000:]
    plan = json.loads((tmp_path / "stage-here" / "plan.json").read_text())
    outs = []
    for number in range(1, len(plan["parts"]) + 1):
        done = suite("call", tmp_path, speed_flags, str(number))
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        outs.append(tmp_path / f"out-call-{number}")
    return packed, plan, outs


@pytest.mark.slow  # about 3 minutes: run it (-m slow) before a GPU window and after changing the suite
def test_the_window_runs_every_call_on_the_cpu(tmp_path, inception):
    packed, plan, outs = run_window(tmp_path, inception, ["--mixed_precision", "bf16", "--channels_last",
                                                          "--allow_tf32"])
    stage = tmp_path / "stage-here"
    assert len(plan["parts"]) >= 2  # the Inception weights alone outgrow one call
    for number, part in enumerate(plan["parts"], start=1):
        carried = (stage / part).stat().st_size + (sum(p.stat().st_size for p in (stage / "whl").iterdir())
                                                   if number == 1 else 0)
        assert carried + plan["tree_bytes"] < CALL_LIMIT
    assert f"python benchmarks/gpu_suite.py call {len(plan['parts'])}" in packed.stdout
    for name in ("fp32", "fast"):
        numbers = json.loads((outs[0] / f"throughput-{name}.json").read_text())
        assert numbers["ours_real_loop_images_per_second"] > 0 and numbers["diffusers_example_images_per_second"] > 0
    assert json.loads((outs[0] / "throughput-fast.json").read_text())["mixed_precision"] == "bf16"
    rows = json.loads((outs[-1] / "time_to_fid.json").read_text())["rows"]
    assert [(r["recipe"], r["sampler"]) for r in rows] == [("quickstart", "edm-dpmsolver"),
                                                            ("data", "train images, from the reference")]
    assert all(r["num_samples"] == 12 and r["fid"] > 0 for r in rows) and rows[0]["budget_minutes"] == 0.05
    assert (outs[-1] / "time_to_fid.png").is_file() and (outs[-1] / "quickstart.log").is_file()
    # A later call on a machine given back in between (nothing staged) stops and says what to do.
    lost = suite("call", tmp_path, [], str(len(plan["parts"])), home="fresh-machine")
    assert lost.returncode != 0 and "start the window again with call 1" in lost.stderr


@pytest.mark.slow
def test_the_throughput_call_compiles_on_the_cpu(tmp_path, inception):
    """The first call with the window's own speed flags, --torch_compile included (minutes on the CPU)."""
    _, _, outs = run_window(tmp_path, inception, ["--mixed_precision", "bf16", "--channels_last", "--allow_tf32",
                                                  "--torch_compile"])
    assert json.loads((outs[0] / "throughput-fast.json").read_text())["torch_compile"] is True
