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


def suite(step, tmp_path, speed_flags, *args, home="home", timeout=900, sizes=None):
    env = {**os.environ, "HOME": str(tmp_path / home), "OUT": str(tmp_path / f"out-{step}-{'-'.join(args)}"),
           "SUITE_STAGE": str(tmp_path / "stage-here"), "SUITE_SIZES": json.dumps(sizes or tiny_sizes(speed_flags)),
           "SMALLGEN_CACHE": str(tmp_path / home / "cache"), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "benchmarks/gpu_suite.py", step, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def tiny_cifar10(tmp_path):
    """40 images of the sample, in the hub's layout and schema (the real parquet: 114 MB)."""
    import datasets

    path = tmp_path / "tiny" / "train-00000-of-00001.parquet"
    datasets.load_dataset(str(SAMPLE_CIFAR10))["train"].select(range(40)).to_parquet(str(path))
    return path


def run_window(tmp_path, inception, speed_flags, *pack_flags, sizes=None, calls=None):
    """Pack, then every call of the plan in order; returns the plan and each call's output folder."""
    packed = suite("pack", tmp_path, speed_flags, "--data", str(tiny_cifar10(tmp_path)), "--weights",
                   inception.path, "--no_wheels", *pack_flags, sizes=sizes)
    assert packed.returncode == 0, packed.stderr[-3000:]
    plan = json.loads((tmp_path / "stage-here" / "plan.json").read_text())
    outs = []
    for number in range(1, (calls or len(plan["parts"])) + 1):
        done = suite("call", tmp_path, speed_flags, str(number), sizes=sizes)
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


@pytest.mark.slow  # about 3 minutes: run it (-m slow) before a seeds32 GPU window
def test_the_seeds_window_goes_on_family_by_family_in_its_extra_calls(tmp_path, inception):
    """pack --table seeds32: no throughput; from the last part's call on, one family a call here (deadline 0),
    the extra calls going on where the one before stopped, the data row last; MeanFlow at 1 and 2 calls."""
    sizes = {**tiny_sizes([]), "num_samples": 12, "seeds_recipes": ["ddpm-linear-t300", "quickstart-meanflow-cifar"],
             "seeds_budget_minutes": 0.05, "seeds_deadline_minutes": 0,
             "seeds_flags": ["--sampler_steps", "2", "--train_flag=--train_batch_size=8",
                             "--train_flag=--eval_batch_size=12",
                             "--train_flag=--model_config_name_or_path=configs/models/unet-tiny.json"]}
    packed = suite("pack", tmp_path, [], "--data", str(tiny_cifar10(tmp_path)), "--weights", inception.path,
                   "--no_wheels", "--table", "seeds32", sizes=sizes)
    assert packed.returncode == 0, packed.stderr[-3000:]
    parts = len(json.loads((tmp_path / "stage-here" / "plan.json").read_text())["parts"])
    assert f"python benchmarks/gpu_suite.py call {parts + 2}" in packed.stdout  # the extra calls are planned
    _, _, outs = run_window(tmp_path, inception, [], "--table", "seeds32", sizes=sizes, calls=parts + 2)
    assert not list(outs[0].glob("throughput-*.json"))
    said = [(out / "time_to_fid.json").is_file() and [r["recipe"] for r in json.loads(
        (out / "time_to_fid.json").read_text())["rows"]] for out in outs[parts - 1:]]
    assert said == [["ddpm-linear-t300"], ["ddpm-linear-t300", "quickstart-meanflow-cifar", "quickstart-meanflow-cifar"],
                    ["ddpm-linear-t300", "quickstart-meanflow-cifar", "quickstart-meanflow-cifar", "data"]]
    rows = json.loads((outs[-1] / "time_to_fid.json").read_text())["rows"]
    assert [(r["sampler"], r["nfe"]) for r in rows[:3]] == [("dpmsolver++", 2), ("meanflow, 1 call", 1),
                                                            ("meanflow, 2 calls", 2)]
    lost = suite("call", tmp_path, [], str(parts + 1), home="fresh-machine", sizes=sizes)
    assert lost.returncode != 0 and "start the window again with call 1" in lost.stderr
