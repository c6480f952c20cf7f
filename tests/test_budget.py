"""--max_train_minutes: a timed warm-up makes the first count and leaves no trace; re-plans follow the loop's
pace; a resumed run goes on from its checkpoint's plan."""

import json
import math
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from smallgen import budget
from tests.conftest import ROOT
from tests.helpers import run_training, tiny_args

BASELINE = dict(model_config_name_or_path=None, base_channels=8, latent_dim=16, adam_beta1=0.5)


def _same_files(a, b):
    names = sorted(p.name for p in a.glob("*.safetensors"))
    assert names == sorted(p.name for p in b.glob("*.safetensors"))
    for name in names:
        x, y = load_file(a / name), load_file(b / name)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), f"{a / name} differs"


@pytest.mark.parametrize("model_type", ["ddpm", "dcgan"])
def test_a_time_budget_equals_its_step_count_given_directly(sprites_dir, tiny_unet_config, tmp_path, model_type,
                                                            monkeypatch):
    """The timing steps are undone: weights, optimizers, EMA, BatchNorm statistics and lr schedules."""
    import smallgen.trainer

    extra = dict(use_ema=True) if model_type == "ddpm" else dict(model_type=model_type, **BASELINE)
    common = dict(checkpointing_steps=3, random_flip=True, lr_warmup_steps=2, **extra)
    timed = tmp_path / "timed"
    # the timing steps run for real on a steady clock (a tick a call: 23 steps, 0.5 s each as timed): the count
    # is the cap, 9, and re-plans keep it, however busy this machine is (its own pace moved the lr once, loaded)
    monkeypatch.setattr(budget, "time", _SteadyClock(1.0))
    monkeypatch.setattr(smallgen.trainer, "time", _SteadyClock(0.01))
    results = run_training(tiny_args(sprites_dir, tiny_unet_config, timed, max_train_minutes=0.3,
                                     max_train_steps=9, **common))
    steps = results["global_step"]
    assert steps == 9 and results["max_train_minutes"] == 0.3 and results["timing_seconds"] > 0
    assert results["images_seen"] == steps * 8 and results["clock_seconds"] > 0
    info = json.loads((timed / "checkpoint-3" / "training_state.json").read_text())
    assert info["max_train_steps"] == steps
    given = tmp_path / "given"
    run_training(tiny_args(sprites_dir, tiny_unet_config, given, max_train_steps=steps, **common))
    _same_files(timed / "checkpoint-3", given / "checkpoint-3")
    last = f"checkpoint-{steps - steps % 3}"
    _same_files(timed / last, given / last)
    lrs = [[json.loads(line).get("lr") for line in (folder / "metrics.jsonl").read_text().splitlines()]
           for folder in (timed, given)]
    assert lrs[0] == lrs[1]  # the schedule spans the same steps


def test_a_resumed_budget_keeps_its_planned_steps(sprites_dir, tiny_unet_config, tmp_path, monkeypatch, capsys):
    """... and its whole plan: the stored schedules, not timed again, printed as the straight run's."""
    common = dict(checkpointing_steps=2, use_ema=True, max_train_minutes=0.3, max_train_steps=6)
    straight = tmp_path / "straight"
    results = run_training(tiny_args(sprites_dir, tiny_unet_config, straight, **common))
    steps = results["global_step"]
    planned = [line for line in capsys.readouterr().out.splitlines() if line.startswith("plan (")]
    assert steps >= 3
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    monkeypatch.setattr(budget, "seconds_per_step", lambda *a: 1e6)  # timing again would plan one step
    again = run_training(tiny_args(sprites_dir, tiny_unet_config, resumed, resume_from_checkpoint="latest",
                                   **common))
    assert again["global_step"] == steps
    _same_files(straight / f"checkpoint-{steps - steps % 2}", resumed / f"checkpoint-{steps - steps % 2}")
    output = capsys.readouterr().out
    assert [line for line in output.splitlines() if line.startswith("plan (")] == planned and len(planned) == 1
    assert "off the clock (as planned before the run; from here)" in output


def test_seconds_per_step_skips_the_slow_first_steps_and_syncs_once_a_window():
    """Warm-up steps are slow and untimed; a host sync after every step would time a loop that syncs only
    when it logs (5-8% slower under accelerate launch on CPU): only each window's last step syncs; a slow
    burst in one window of five moves the median, not the step time."""
    import time

    calls, syncs = [], []
    probed = budget.WARM_UP_STEPS + budget.PROBE_STEPS

    def step(i, sync):
        calls.append(i)
        if sync:
            syncs.append(i)
        slow = i < budget.WARM_UP_STEPS or (len(syncs) == 3 and i > probed)  # the second timed window bursts
        time.sleep(0.05 if slow else 0.002)

    seconds = budget.seconds_per_step(step, budget_seconds=2.0)
    assert seconds < 0.01 and calls == list(range(len(calls)))
    count = (len(calls) - probed) // budget.TIMED_WINDOWS
    assert count >= 2 and len(calls) == probed + budget.TIMED_WINDOWS * count
    assert syncs == [budget.WARM_UP_STEPS - 1, probed - 1, *(probed + count * w - 1 for w in range(1, 6))]
    assert budget.steps_in_budget(1, 0.5, None) == 120 and budget.steps_in_budget(1, 0.5, 50) == 50
    assert budget.steps_in_budget(0.001, 10.0, None) == 1


def test_bad_budgets_are_refused(tmp_path, sprites_dir, tiny_unet_config):
    from smallgen.errors import ConfigError

    for bad in ("0", "-1"):
        with pytest.raises(ConfigError, match="max_train_minutes"):
            run_training(tiny_args(sprites_dir, tiny_unet_config, tmp_path / "x", max_train_minutes=bad))
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs os.sched_getaffinity")
def test_accelerate_launch_trains_on_the_cores_left_free(sprites_dir, tiny_unet_config, tmp_path):
    """accelerate launch without --cpu sets OMP_NUM_THREADS=1 on a machine with no GPU; we use every core that
    other work leaves free (the load stated, SMALLGEN_BUSY_CORES, so the verdict is this machine's load's in no
    way: a core kept busy elsewhere slowed the quick start 2.8 times); --cpu_threads wins."""
    cores = len(os.sched_getaffinity(0))
    argv = tiny_args(sprites_dir, tiny_unet_config, tmp_path / "run", max_train_steps=1, cpu_threads=None)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "ACCELERATE_USE_CPU")}
    env.update(PYTHONPATH=str(ROOT), SMALLGEN_BUSY_CORES="0", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
                           "train_unconditional.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"CPU: {cores} threads per process ({cores} cores, 0.0 busy" in done.stdout + done.stderr
    busy = {**env, "SMALLGEN_BUSY_CORES": str(cores - 1)}
    done = subprocess.run([sys.executable, "train_unconditional.py", *argv, "--output_dir", str(tmp_path / "busy")],
                          cwd=ROOT, env=busy, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "CPU: 1 threads per process" in done.stdout, done.stdout[-1000:]
    argv += ["--cpu_threads", "2", "--output_dir", str(tmp_path / "two")]
    done = subprocess.run([sys.executable, "train_unconditional.py", *argv], cwd=ROOT, env=busy,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "CPU: 2 threads per process" in done.stdout + done.stderr


def test_a_process_kept_busy_elsewhere_is_seen(monkeypatch):
    """The reading: a spinning process counts (other load only adds to it); a stated load replaces it."""
    import time

    from smallgen.environment import busy_cores_elsewhere
    from smallgen.errors import UserError

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert busy_cores_elsewhere(0.5) >= 0.7
    finally:
        spinner.kill()
    monkeypatch.setenv("SMALLGEN_BUSY_CORES", "1.5")
    assert busy_cores_elsewhere() == 1.5
    monkeypatch.setenv("SMALLGEN_BUSY_CORES", "many")
    with pytest.raises(UserError, match="SMALLGEN_BUSY_CORES='many' is not a number of cores"):
        busy_cores_elsewhere()


def test_two_processes_agree_on_the_timing_and_the_step_count(sprites_dir, tiny_unet_config, tmp_path):
    """Every process runs the same timing steps (each step all-reduces gradients) and gets one count."""
    from tests.helpers import launch_two_processes

    argv = tiny_args(sprites_dir, tiny_unet_config, tmp_path / "ddp", max_train_minutes=0.02, train_batch_size=4,
                     use_ema=True)
    result = launch_two_processes(argv, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    planned = [line for line in result.stdout.splitlines() if line.startswith("time budget")]
    assert len(planned) == 1  # printed by the main process
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["num_processes"] == 2 and f"{results['planned_steps']} optimizer steps" in planned[0]


def test_the_budgeted_step_count_reaches_the_lr_schedule(sprites_dir, tiny_unet_config, tmp_path, monkeypatch):
    """Without --max_train_steps the first plan is 100 epochs (400 steps); the budget's few steps must be what the
    cosine schedule spans, so the lr has decayed to 0 at the budget's last step (30 steps of 0.1 s on a steady
    clock: this machine's load decides nothing)."""
    _steady_steps(monkeypatch, tick=0.1, timed_as=0.1)
    out = tmp_path / "run"
    results = run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_minutes=0.05, lr_warmup_steps=0,
                                     checkpointing_steps=None))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if "lr" in r]
    assert results["global_step"] == 30 and len(lrs) == 30
    assert lrs[0] > 1e-4 and lrs[-1] < 1e-9, (lrs[0], lrs[-1])


def test_off_the_clock_work_keeps_to_its_share_of_a_budget_and_flags_win():
    from smallgen.plan import rounds

    def cost(per_image):
        return lambda images: per_image * images

    plan = budget.plan_off_clock(50, None, cost(1.0), 5.0, None, None)
    assert (plan.grid_images, plan.grid_every, plan.validate_every) == (16, 10, 1)  # no budget: the old defaults
    # 1 min: a tenth is 6 s; a round of 16 images would take 19.2 s, so 5 images (6 s), one round (the last)
    plan = budget.plan_off_clock(17, 1.0, cost(1.2), 0.4, None, None)
    assert (plan.grid_images, plan.grid_every) == (5, 18) and rounds(0, 17, plan.grid_every) == 1
    assert plan.validate_every == 3 and rounds(0, 17, 3) == 6  # 7 validations fit in 3 s: every 3 epochs
    plan = budget.plan_off_clock(40, 1.0, cost(1 / 16), 0.01, None, None)  # cheap: 6 rounds of 16 images
    assert (plan.grid_images, plan.grid_every, plan.validate_every) == (16, 7, 1) and rounds(0, 40, 7) == 6
    plan = budget.plan_off_clock(17, 1.0, cost(1.2), 0.4, 16, 5)  # given flags are kept
    assert (plan.grid_images, plan.grid_every) == (16, 5)
    assert budget.plan_off_clock(17, 1.0, cost(100.0), 0.4, None, None).grid_images == 4  # never below 4
    assert rounds(20, 50, 10) == 3  # resumed at epoch 20: after epochs 30, 40 and 50


def test_a_cpu_run_says_what_it_spends_off_the_clock_and_keeps_to_it(sprites_dir, tiny_unet_config, tmp_path,
                                                                     monkeypatch, capsys):
    """Without --save_images_epochs and --ddpm_num_inference_steps, on the CPU: the run times a round
    of grids and a validation pass, says so before training, draws the rounds it announced (no DDPM
    grid: T steps on the CPU take minutes) and records its wall time. The steps run on a steady clock: a
    re-plan at another pace changes the epoch count, and with it the rounds (CI's busy run drew 3 of 4)."""
    _steady_steps(monkeypatch, tick=0.1, timed_as=0.1)
    out, started = tmp_path / "run", time.time()
    results = run_training(tiny_args(sprites_dir, tiny_unet_config, out, ddpm_num_inference_steps=None,
                                     save_images_epochs=None, num_sample_images=None, max_train_minutes=0.05))
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("off the clock")]
    assert "sample grids of" in line and "validation" in line, line
    rounds = int(line.split(" a round x ")[1].split(";")[0])
    grids = sorted(p.name for p in (out / "samples").iterdir())
    # (how many rounds fit follows the grid's real timing: 1 under two busy loops, 4 idle; the count drawn is
    # the count announced either way)
    assert len(grids) == rounds and all(name.endswith("_ddim.png") for name in grids), (line, grids)
    # the wall time is the process's, on the real clock (here pytest's worker: at least this test's time)
    assert results["wall_seconds"] >= time.time() - started - 1 and results["training_seconds"] > 0


def test_a_replan_stretches_what_is_left_of_the_lr_schedule():
    """Written out: 100 steps planned, re-planned at step 40 to 70 steps, then at step 55 to 85."""
    from smallgen.plan import RunPlan

    plan = RunPlan(10, 100, 10, 1, 0, 0, 1, 4, planned_steps=100, replan_every=5)
    assert [plan.schedule_position(s) for s in (0, 40, 100)] == [0, 40, 100]  # the step itself
    assert plan.replanned(40, 100) is plan
    shorter = plan.replanned(40, 70)
    assert (shorter.max_train_steps, shorter.num_epochs, shorter.replanned_at) == (70, 7, 40)
    assert [shorter.schedule_position(s) for s in (40, 55, 70)] == [40, 40 + 15 * 60 / 30, 100]
    longer = shorter.replanned(55, 85)  # at step 55 the schedule stood at 70; 30 steps left for 30 of it
    assert longer.position_micro == 70 * 10**6 and longer.schedule_position(85) == 100
    assert longer.schedule_position(60) == 75
    assert [plan.replans(s) for s in (5, 7, 10, 100)] == [True, False, True, False]


def test_replanned_steps_fill_what_is_left_at_the_recent_pace():
    # 30 s of a 60 s budget spent in 100 steps, the last 20 at 0.5 s: 60 more steps fit, not 100
    assert budget.replanned_steps(100, 30.0, 10.0, 20, 60.0, None) == 160
    assert budget.replanned_steps(100, 30.0, 10.0, 20, 60.0, 150) == 150  # --max_train_steps caps
    assert budget.replanned_steps(100, 61.0, 10.0, 20, 60.0, None) == 101  # over: one step, the lr ends at 0


def test_the_cosine_lr_ends_at_0_whatever_the_re_plans_do():
    """Written out over 5,000 random runs: every re-plan (a count from one step more to 200 more, at each re-plan
    step) still ends diffusers' cosine schedule at 0 at the last step, and the lr never jumps up (under load a
    budget's pace changes; the lr must not end above 0 then)."""
    import random

    from diffusers.optimization import get_cosine_schedule_with_warmup

    from smallgen.plan import RunPlan

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    for trial in range(5000):
        draw = random.Random(trial)
        planned = draw.randint(1, 60)
        cosine = get_cosine_schedule_with_warmup(optimizer, 0, planned).lr_lambdas[0]
        plan, step, lrs = RunPlan(4, planned, math.ceil(planned / 4), 1, 0, 0, 1, 4, planned_steps=planned,
                                  replan_every=math.ceil(planned / 20)), 0, []
        while step < plan.max_train_steps:
            step += 1
            lrs.append(cosine(plan.schedule_position(step)))
            if plan.replans(step):
                plan = plan.replanned(step, step + draw.choice([1, 2, draw.randint(1, 200)]))
        assert lrs[-1] < 1e-12 and all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:])), (trial, lrs)


class _SteadyClock:
    """``time`` for smallgen.trainer whose perf_counter ticks ``tick`` seconds a call: a training step (two
    calls) takes exactly one tick, whatever else this machine is doing."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now

    def __getattr__(self, name):
        import time

        return getattr(time, name)


def _steady_steps(monkeypatch, tick: float, timed_as: float):
    """Steps of exactly ``tick`` seconds, which the timing before the run reads as ``timed_as`` seconds (the
    machine slowed down during it: 0.86 of the budget was filled so on the quick start)."""
    import smallgen.trainer

    monkeypatch.setattr(smallgen.trainer, "time", _SteadyClock(tick))
    monkeypatch.setattr(budget, "seconds_per_step", lambda *a, **k: timed_as)


def test_a_budget_follows_the_loops_own_pace(sprites_dir, tiny_unet_config, tmp_path, monkeypatch, capsys):
    """A first count 8 times too small (15 steps of 0.08 s for 1.2 s; they take 0.01 s): the re-plans fill
    the budget with 120 steps, the cosine lr goes on without a jump (no drop larger than the planned
    schedule's steepest, pi/2 lr / planned steps) and ends at 0."""
    _steady_steps(monkeypatch, tick=0.01, timed_as=0.08)
    out = tmp_path / "run"
    results = run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_minutes=0.02, lr_warmup_steps=0,
                                     checkpointing_steps=None))
    planned, steps = results["planned_steps"], results["global_step"]
    assert planned == 15 and 119 <= steps <= 120 and results["clock_seconds"] == pytest.approx(steps * 0.01)
    assert f"budget: {planned} planned before the run, {steps} at the loop's own pace" in capsys.readouterr().out
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()
           if "lr" in json.loads(line)]
    assert len(lrs) == steps and lrs[-1] < 1e-9
    drops = [a - b for a, b in zip(lrs, lrs[1:])]
    assert min(drops) >= 0 and max(drops) <= 1e-3 * math.pi / 2 / planned * 1.0001, (min(drops), max(drops))


def test_a_resumed_budget_goes_on_from_the_stored_replan(sprites_dir, tiny_unet_config, tmp_path, monkeypatch):
    """The count and the lr schedules' position after a re-plan are stored in each checkpoint: resumed
    from one, the next step's lr is the straight run's (it is not if the position is lost)."""
    _steady_steps(monkeypatch, tick=0.01, timed_as=0.04)
    common = dict(max_train_minutes=0.005, lr_warmup_steps=0, checkpointing_steps=3)
    straight = tmp_path / "straight"
    results = run_training(tiny_args(sprites_dir, tiny_unet_config, straight, **common))
    stored = json.loads((straight / "checkpoint-6" / "training_state.json").read_text())
    assert results["planned_steps"] == 7 and stored["plan"]["replanned_at"] in range(1, 7)
    assert stored["max_train_steps"] > 7
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-6", resumed / "checkpoint-6")
    run_training(tiny_args(sprites_dir, tiny_unet_config, resumed, resume_from_checkpoint="latest", **common))
    lr = {folder: {r["step"]: r["lr"] for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
                   if "lr" in r} for folder in (straight, resumed)}
    assert min(lr[resumed]) == 7 and lr[resumed][7] == lr[straight][7]
