"""Several processes follow one plan: made once from timings every process agrees on, broadcast, printed
and stored; a process left waiting in a collective gives up quickly, naming the step."""

import json
import time

from tests.helpers import launch_two_processes, tiny_args

SKEWED = "tests/skewed_training.py"  # process 1 validates SKEW_SECONDS slower than process 0


def _plans(stdout: str) -> list[str]:
    """Each process's plan line, less the 'process i of n, ' that names it."""
    return [line.split(" of 2, ", 1)[1] for line in stdout.splitlines() if line.startswith("plan (process")]


def test_processes_that_time_validation_differently_follow_one_plan(sprites_dir, tiny_unet_config, tmp_path):
    """Process 0 times a validation pass in ~0.05 s, process 1 in ~1 s: from their own clocks, 0 would
    validate every epoch and 1 only at the end, and 0 would wait in a reduce that 1 never enters."""
    out = tmp_path / "run"
    argv = tiny_args(sprites_dir, tiny_unet_config, out, max_train_minutes=0.3, max_train_steps=20,
                     train_batch_size=4, checkpointing_steps=8)
    result = launch_two_processes(argv, command=SKEWED, env={"SKEW_SECONDS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    plans = _plans(result.stdout)
    assert len(plans) == 2 and plans[0] == plans[1], plans
    stored = json.loads((out / "checkpoint-8" / "training_state.json").read_text())["plan"]
    assert stored["max_train_steps"] == json.loads((out / "results.json").read_text())["global_step"]
    assert f"{stored['max_train_steps']} optimizer steps" in plans[0]
    assert stored["validate_every"] > stored["num_epochs"]  # the slow process's second decides: the last epoch only


def test_a_process_left_waiting_gives_up_naming_the_step(sprites_dir, tiny_unet_config, tmp_path):
    """Process 1 is stuck for 60 s after its first validation pass; process 0 waits --ddp_timeout (5 s) for it in
    the next collective, not 30 minutes."""
    argv = tiny_args(sprites_dir, tiny_unet_config, tmp_path / "run", max_train_steps=4, train_batch_size=4)
    start = time.perf_counter()
    result = launch_two_processes(argv, command=SKEWED, env={"SKEW_SECONDS": "60"}, ddp_timeout=5,
                                  timeout=45)
    assert result.returncode != 0
    assert time.perf_counter() - start < 50, "the launch outlived the stuck process's 60 s"
    assert "process 0 of 2 gave up waiting for the others at step 0" in result.stderr, result.stderr[-3000:]
    assert "--ddp_timeout (5 s)" in result.stderr
