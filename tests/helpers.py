"""What the tests share: running training in-process or as scripts, tiny runs' flags, two-process
launches, checkpoint comparisons and small generated data sets."""

import os
import subprocess
import sys

import numpy as np
from safetensors.torch import load_file

from tests.conftest import ROOT


def run_training(argv):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # one Accelerator per run, as in a fresh process
    from smallgen.config import parse_args
    from smallgen.trainer import train

    return train(*parse_args([str(a) for a in argv]))  # UserErrors propagate (main() turns them into exit 2)


def ema_weights(checkpoint):
    """The EMA weights stored in a checkpoint, in the network's parameter order."""
    tensors = load_file(checkpoint / "training_state.safetensors")
    keys = sorted((k for k in tensors if k.startswith("ema.shadow_params.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    return [tensors[k] for k in keys]


CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
# pytest-xdist runs a worker per core (setup.cfg): each test's runs take its share of the cores
CPU_THREADS = max(1, CORES // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


FIXED_GRID_STEPS = ("consistency", "meanflow")  # model types whose grids are drawn in fixed step counts


def tiny_args(data_dir, config, output_dir, **overrides):
    """Flags of a tiny run (seconds): the UNet ones with a UNet ``config``, the DDPM ones for ddpm."""
    args = {
        "train_data_dir": data_dir, "resolution": 16, "validation_fraction": 0.25, "output_dir": output_dir,
        "train_batch_size": 8, "eval_batch_size": 8, "num_sample_images": 4, "learning_rate": 1e-3,
        "lr_warmup_steps": 2, "logging_steps": 1, "logger": "none", "save_images_epochs": 100, "seed": 7,
        "cpu_threads": CPU_THREADS,  # fixed: runs compared bit for bit must not take cores another job left
    }
    if config is not None and overrides.get("model_config_name_or_path", config) is not None:
        args.update(model_config_name_or_path=config)
        if overrides.get("model_type") not in FIXED_GRID_STEPS:
            args.update(grid_num_inference_steps=3)
    if overrides.get("model_type", "ddpm") == "ddpm":
        args.update(ddpm_num_steps=100, ddpm_num_inference_steps=5)
    args.update(overrides)
    argv = []
    for key, value in args.items():
        if value is True:
            argv.append(f"--{key}")
        elif isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        elif value is not False and value is not None:
            argv += [f"--{key}", str(value)]
    return argv


def script(*args, env=None, timeout=300):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def snapshot(folder):
    """Every file's bytes under ``folder`` (paths relative to it)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_thread_each(argv) -> list[str]:
    """``argv`` with tiny_args' --cpu_threads set to 1: two processes share this machine's cores."""
    argv = [str(a) for a in argv]
    if "--cpu_threads" in argv:
        argv[argv.index("--cpu_threads") + 1] = "1"
    return argv


def launch_two_processes(argv, timeout=180, command="train_unconditional.py", ddp_timeout=60, env=None):
    """Two real CPU processes (gloo) running ``command`` (``--cpu`` alone would start only one); ``stdout`` and
    ``stderr`` are rank 0's then rank 1's, then the launcher's. A run that has not ended after ``timeout``
    seconds is killed, with its launcher, and the test fails at once showing each process's plan and last
    lines. Training runs get ``--ddp_timeout ddp_timeout``: a process left waiting gives up first."""
    import signal
    import tempfile

    import pytest

    logs = tempfile.mkdtemp(prefix="ranks-")
    extra = ["--ddp_timeout", str(ddp_timeout)] if "train" in command else []
    args = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
            "--tee", "3", "--log_dir", logs, command, *one_thread_each(argv), *extra]
    launcher = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                     "ACCELERATE_USE_CPU": "true", **(env or {})})
    try:
        _, launcher_err = launcher.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and both processes
        launcher.communicate()
        pytest.fail(f"two processes still running after {timeout} s, killed:\n" + _ranks_report(logs))
    ranks = _rank_logs(logs)
    return subprocess.CompletedProcess(args, launcher.returncode, "".join(out for out, _ in ranks),
                                       "".join(err for _, err in ranks) + launcher_err)


def _rank_logs(folder) -> list[tuple[str, str]]:
    """(stdout, stderr) of each rank, from torchrun's --log_dir (one attempt: no restarts)."""
    from pathlib import Path

    found = {}
    for path in Path(folder).glob("*/attempt_*/*/std*.log"):
        found.setdefault(int(path.parent.name), {})[path.stem] = path.read_text(errors="replace")
    return [(found.get(rank, {}).get("stdout", ""), found.get(rank, {}).get("stderr", "")) for rank in (0, 1)]


def _ranks_report(folder) -> str:
    """Each rank's plan line and its last lines (tqdm's redraws split into lines)."""
    report = []
    for rank, (out, err) in enumerate(_rank_logs(folder)):
        lines = [line.strip() for line in (out + err).replace("\r", "\n").splitlines() if line.strip()]
        plan = [line for line in lines if line.startswith("plan")]
        report.append(f"rank {rank}: {plan[-1] if plan else '(no plan printed)'}\n  " + "\n  ".join(lines[-6:]))
    return "\n".join(report)


FAKE_SRUN = """#!/bin/bash
# srun on two nodes: the task command twice at once, with SLURM_NODEID 0 and 1 (output to files: a full
# pipe would stall one node and the other with it)
while [[ "$1" == --* ]]; do shift; done
pids=()
for node in 0 1; do
    SLURM_NODEID=$node "$@" > "$NODE_LOGS/node$node.out" 2> "$NODE_LOGS/node$node.err" &
    pids+=($!)
done
code=0
for pid in "${pids[@]}"; do wait "$pid" || code=$?; done
exit $code
"""


def launch_two_machines(argv, folder, timeout=240):
    """``tools/multinode.sbatch`` as SLURM would run it on two nodes of one GPU each, here two launchers
    on 127.0.0.1 as machines 0 and 1 (one CPU process each, gloo). Returns the exit code and each
    node's (stdout, stderr)."""
    import socket

    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    shims = folder / "bin"
    shims.mkdir(parents=True, exist_ok=True)
    (shims / "srun").write_text(FAKE_SRUN)
    (shims / "scontrol").write_text("#!/bin/bash\necho 127.0.0.1\n")  # show hostnames: the first node
    for shim in ("srun", "scontrol"):
        (shims / shim).chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true",
           "PATH": f"{shims}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "NODE_LOGS": str(folder),
           "SLURM_JOB_NODELIST": "node[0-1]", "SLURM_NNODES": "2", "SLURM_NODEID": "0", "SLURM_JOB_ID": "1", "GPUS_PER_NODE": "1",
           "MAIN_PORT": str(port)}
    import signal

    import pytest

    launcher = subprocess.Popen(["bash", str(ROOT / "tools" / "multinode.sbatch"), *one_thread_each(argv)], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    try:
        launcher.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)  # the script, both launchers and their processes
        launcher.communicate()
    nodes = [((folder / f"node{n}.out").read_text(), (folder / f"node{n}.err").read_text()) for n in (0, 1)]
    if launcher.returncode == -signal.SIGKILL:
        last = [f"node {n}: " + " | ".join((out + err).replace("\r", "\n").strip().splitlines()[-4:])
                for n, (out, err) in enumerate(nodes)]
        pytest.fail(f"two machines still running after {timeout} s, killed:\n" + "\n".join(last))
    return launcher.returncode, nodes


def assert_same_checkpoint(a, b):
    """Every tensor of every safetensors file of checkpoint ``a`` equals ``b``'s, bit for bit."""
    import torch

    names = sorted(p.name for p in a.glob("*.safetensors"))
    assert names and names == sorted(p.name for p in b.glob("*.safetensors"))
    for name in names:
        x, y = load_file(a / name), load_file(b / name)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name


def kill_9_then_resume(argv_for, tmp_path, last_step):
    """Train straight; train again, SIGKILL it after its first checkpoint, resume with 'latest'; the two
    runs' last checkpoints must be identical. ``argv_for(output_dir, **flags)`` gives the flags."""
    import signal
    import time

    from smallgen.checkpoints import list_checkpoints

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_training(argv_for(straight))
    process = subprocess.Popen([sys.executable, "train_unconditional.py", *map(str, argv_for(killed))], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list_checkpoints(str(killed)) and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = list_checkpoints(str(killed))
    assert done and int(done[-1].name.split("-")[1]) < last_step, "killed before the end, after a checkpoint"
    assert not (killed / "model_index.json").exists()
    run_training(argv_for(killed, resume_from_checkpoint="latest"))
    assert_same_checkpoint(straight / f"checkpoint-{last_step}", killed / f"checkpoint-{last_step}")


def red_and_blue(folder, count=64, size=8, seed=0):
    """A parquet of mostly-red (class 0, 'red') and mostly-blue (class 1, 'blue') noisy images."""
    import io

    import datasets
    from PIL import Image

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(count):
        label = i % 2
        pixels = rng.integers(0, 60, (size, size, 3))
        pixels[..., 0 if label == 0 else 2] += 180
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
        images.append({"bytes": buffer.getvalue(), "path": None})
        labels.append(label)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["red", "blue"])})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.parquet"
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(str(path))
    return path


def assert_same_images_without_this_project(pipeline, folder, tmp_path, class_name, steps=4):
    """``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` where only diffusers is
    installed gives ``class_name`` and the same two images as ``pipeline`` for seeds 0 and 1."""
    import torch

    from tests.conftest import run_without_this_project

    plain = [torch.Generator().manual_seed(i) for i in range(2)]  # what a machine without smallgen can make
    np.save(tmp_path / "ours.npy", pipeline(batch_size=2, generator=plain, num_inference_steps=steps,
                                            output_type="np").images)
    code = f"""
import numpy as np, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({str(folder)!r}, trust_remote_code=True)
generators = [torch.Generator().manual_seed(i) for i in range(2)]
images = pipe(batch_size=2, generator=generators, num_inference_steps={steps}, output_type="np").images
print(type(pipe).__name__, float(np.abs(images - np.load({str(tmp_path / "ours.npy")!r})).max()))
"""
    result = run_without_this_project(code, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    name, difference = result.stdout.split()
    assert name == class_name and float(difference) == 0.0


def train_on_red_and_blue(tmp_path, model_type: str, pipeline_class):
    """A tiny UNet of ``model_type`` trained 300 steps on red_and_blue at 8 px; its pipeline, loaded back."""
    import json

    config = json.loads((ROOT / "configs/models/unet-tiny.json").read_text())
    config.update(block_out_channels=[32, 64], norm_num_groups=8, dropout=0.0)
    (tmp_path / "unet.json").write_text(json.dumps(config))
    data = red_and_blue(tmp_path / "data")
    out = tmp_path / "run"
    run_training(tiny_args(None, tmp_path / "unet.json", out, model_type=model_type, dataset_name=data, resolution=8,
                           train_batch_size=16, learning_rate=2e-3, lr_warmup_steps=10, validation_fraction=0.125,
                           max_train_steps=300, logging_steps=50, checkpointing_steps=300))
    pipe = pipeline_class.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assert_red_or_blue(images) -> None:
    """Each image (N, H, W, 3 floats) one colour, red or blue, not a purple mean; both colours present."""
    red, green, blue = (images[..., c].mean(axis=(1, 2)) for c in range(3))
    assert (abs(red - blue) > 0.3).all(), (red, blue)  # each image one colour, not both half-way
    assert (green < 0.35).all(), green
    assert (red > blue).any() and (blue > red).any(), (red, blue)  # both modes, none dropped
