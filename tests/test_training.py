"""train_unconditional.py end to end on tiny models (CPU, seconds each)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from smallgen.checkpoints import list_checkpoints, resolve_resume_checkpoint
from smallgen.errors import ConfigError, UserError
from smallgen.trainer import TrainingDiverged
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


def tiny_args(data_dir, config, output_dir, **overrides):
    """Flags of a tiny run (seconds): the UNet ones with a UNet ``config``, the DDPM ones for ddpm."""
    args = {
        "train_data_dir": data_dir, "resolution": 16, "validation_fraction": 0.25, "output_dir": output_dir,
        "train_batch_size": 8, "eval_batch_size": 8, "num_sample_images": 4, "learning_rate": 1e-3,
        "lr_warmup_steps": 2, "logging_steps": 1, "logger": "none", "save_images_epochs": 100, "seed": 7,
    }
    if config is not None and overrides.get("model_config_name_or_path", config) is not None:
        args.update(model_config_name_or_path=config, ddim_num_inference_steps=3)
    if overrides.get("model_type", "ddpm") == "ddpm":
        args.update(ddpm_num_steps=100, ddpm_num_inference_steps=5)
    args.update(overrides)
    argv = []
    for key, value in args.items():
        if value is True:
            argv.append(f"--{key}")
        elif value is not False and value is not None:
            argv += [f"--{key}", str(value)]
    return argv


def test_tiny_run_writes_a_loadable_pipeline(sprites_dir, tiny_unet_config, tmp_path):
    out = tmp_path / "run"
    results = run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=8, use_ema=True,
                                     checkpointing_steps=4, random_flip=True, save_images_epochs=1))
    assert results["global_step"] == 8 and results["val_loss"] > 0
    for name in ("model_index.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json",
                 "README.md", "loss_curves.png", "metrics.jsonl", "training_args.json"):
        assert (out / name).exists(), name
    assert not list(out.rglob("*.bin")) or all("checkpoint-" in str(p) for p in out.rglob("*.bin"))
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "epoch_0000_ddim.png", "epoch_0000_ddpm.png", "epoch_0001_ddim.png", "epoch_0001_ddpm.png"]
    card = (out / "README.md").read_text()
    assert "library_name: diffusers" in card and "samples/epoch_0001_ddim.png" in card
    assert f'DiffusionPipeline.from_pretrained("{out}")' in card  # loads what was trained

    from diffusers import DDIMPipeline, DDPMPipeline, DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(out)
    assert isinstance(pipeline, DDPMPipeline)
    images = pipeline(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                      output_type="np").images
    assert images.shape == (2, 16, 16, 3) and images.min() >= 0 and images.max() <= 1
    ddim = DDIMPipeline.from_pretrained(out)
    images = ddim(batch_size=2, num_inference_steps=3, output_type="np").images
    assert images.shape == (2, 16, 16, 3)
    # The exported weights are the EMA weights.
    ema = ema_weights(out / "checkpoint-8")
    exported = list(pipeline.unet.parameters())
    assert len(ema) == len(exported) and all(torch.equal(a, b) for a, b in zip(ema, exported))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "train_loss" in m] == [1, 2, 3, 4, 5, 6, 7, 8]
    args = json.loads((out / "training_args.json").read_text())
    assert "hub_token" not in args and args["use_ema"] is True


def test_resume_is_exact(sprites_dir, tiny_unet_config, tmp_path):
    # 36 training images, batch 8, accumulation 2: 2 optimizer steps an epoch; step 3 is mid-epoch.
    common = dict(max_train_steps=6, checkpointing_steps=3, use_ema=True, gradient_accumulation_steps=2,
                  random_flip=True)
    straight = tmp_path / "straight"
    run_training(tiny_args(sprites_dir, tiny_unet_config, straight, **common))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    run_training(tiny_args(sprites_dir, tiny_unet_config, resumed, resume_from_checkpoint="latest", **common))
    a = load_file(straight / "checkpoint-6" / "unet.safetensors")
    b = load_file(resumed / "checkpoint-6" / "unet.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first_half = load_file(straight / "checkpoint-3" / "unet.safetensors")
    assert any(not torch.equal(a[k], first_half[k]) for k in a)  # the second half did train
    states = [json.loads((folder / "checkpoint-6" / "training_state.json").read_text())["state"]["ema"]
              for folder in (straight, resumed)]
    assert states[0] == states[1] and dict(states[0]["__dict__"])["optimization_step"] == 6
    assert all(torch.equal(x, y) for x, y in zip(ema_weights(straight / "checkpoint-6"),
                                                  ema_weights(resumed / "checkpoint-6")))
    optimizer_a = load_file(straight / "checkpoint-6" / "training_state.safetensors")
    optimizer_b = load_file(resumed / "checkpoint-6" / "training_state.safetensors")
    assert optimizer_a.keys() == optimizer_b.keys() and all(torch.equal(optimizer_a[k], optimizer_b[k]) for k in optimizer_a)
    exported_a = load_file(straight / "unet" / "diffusion_pytorch_model.safetensors")
    exported_b = load_file(resumed / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(exported_a[k], exported_b[k]) for k in exported_a)
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps.count(4) >= 1 and 1 not in steps  # the resumed run logs from step 4 on


def test_checkpoint_pruning_and_interrupted_saves(sprites_dir, tiny_unet_config, tmp_path):
    out = tmp_path / "run"
    run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=5, checkpointing_steps=1,
                           checkpoints_total_limit=2))
    assert [p.name for p in list_checkpoints(str(out))] == ["checkpoint-4", "checkpoint-5"]
    assert not list(out.glob("*.tmp"))
    # A save killed half way leaves a .tmp folder or a folder without its state file: never "latest".
    (out / "checkpoint-9.tmp").mkdir()
    (out / "checkpoint-9.tmp" / "model.safetensors").write_bytes(b"partial")
    (out / "checkpoint-8").mkdir()
    assert resolve_resume_checkpoint("latest", str(out)).name == "checkpoint-5"
    run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=6, checkpointing_steps=1,
                           checkpoints_total_limit=2, resume_from_checkpoint="latest"))
    assert [p.name for p in list_checkpoints(str(out))] == ["checkpoint-5", "checkpoint-6"]
    assert not (out / "checkpoint-9.tmp").exists()
    with pytest.raises(UserError, match="cannot resume from .*checkpoint-8: no training_state.json"):
        resolve_resume_checkpoint(str(out / "checkpoint-8"), str(out))


def test_existing_output_dir_is_not_overwritten(sprites_dir, tiny_unet_config, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="already holds files from another run"):
        run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=1))
    assert (out / "precious.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1
    run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=1, overwrite_output_dir=True))
    assert (out / "model_index.json").exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(sprites_dir, tiny_unet_config, tmp_path):
    out = tmp_path / "run"
    # Warm-up of 0, no clipping and an absurd constant learning rate blow the weights up after a step or two.
    with pytest.raises(TrainingDiverged, match="train_loss became (nan|inf)") as info:
        run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=40, checkpointing_steps=1,
                               learning_rate=1e30, lr_warmup_steps=0, lr_scheduler="constant", max_grad_norm=0,
                               adam_epsilon=1e-30))
    good = list_checkpoints(str(out))
    assert good, "the first step's checkpoint is kept"
    assert str(good[-1]) in str(info.value)
    weights = load_file(good[-1] / "unet.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (out / "model_index.json").exists()  # no pipeline exported from a diverged run


def test_config_file_and_flag_errors(tmp_path, sprites_dir):
    from smallgen.config import parse_args

    good = tmp_path / "good.yaml"
    good.write_text("train_data_dir: x\nlearning_rate: 1e-4\nddpm_beta_schedule: cosine\nuse_ema: true\n")
    data_args, diffusion_args, train_args = parse_args(["--config", str(good), "--learning_rate", "3e-4"])
    assert train_args.learning_rate == 3e-4 and train_args.use_ema is True  # the flag beats the file
    from smallgen.objectives.diffusion import diffusers_beta_schedule

    assert diffusers_beta_schedule(diffusion_args) == "squaredcos_cap_v2" and data_args.train_data_dir == "x"

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("learning_rate: 1e-4\nlearnig_rate: 2e-4\n")
    with pytest.raises(ConfigError, match="unknown key\\(s\\) in .*: learnig_rate. Valid keys: .*learning_rate"):
        parse_args(["--config", str(unknown)])
    bad_value = tmp_path / "bad.yaml"
    bad_value.write_text("ddpm_beta_schedule: cosine_v3\n")
    with pytest.raises(ConfigError, match="--ddpm_beta_schedule must be one of linear, scaled_linear, squaredcos_cap_v2"):
        parse_args(["--config", str(bad_value)])
    token = tmp_path / "token.yaml"
    token.write_text("hub_token: hf_secret\n")
    with pytest.raises(ConfigError, match="keep tokens out of files"):
        parse_args(["--config", str(token)])
    with pytest.raises(ConfigError, match="unknown argument\\(s\\): --learnig_rate"):
        parse_args(["--learnig_rate", "1"])
    with pytest.raises(ConfigError, match="does not exist"):
        parse_args(["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(ConfigError, match="--ddim_num_inference_steps must be between 1 and --ddpm_num_steps=100"):
        parse_args(["--ddpm_num_steps", "100", "--ddim_num_inference_steps", "200", "--ddpm_num_inference_steps", "100"])


def _script(*args, env=None, timeout=300):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def test_cli_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ddpm_beta_schedule: cosine_v3\n")
    result = _script("train_unconditional.py", "--config", bad)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --ddpm_beta_schedule must be one of linear, scaled_linear, squaredcos_cap_v2, cosine, sigmoid; "
        "got 'cosine_v3'"
    ]
    missing = _script("train_unconditional.py", "--dataset_name", "./no/such/data", "--output_dir", tmp_path / "o")
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1].startswith(
        "error: dataset path './no/such/data' does not exist")
    assert "Traceback" not in missing.stderr
    choice = _script("train_unconditional.py", "--mixed_precision", "fp8")
    assert choice.returncode == 2 and "invalid choice: 'fp8'" in choice.stderr


def test_two_processes_really_run_and_resume_exactly(sprites_dir, tiny_unet_config, tmp_path):
    # 36 training images: batch 4 x 2 processes = 4 steps an epoch (one process of batch 4: 9).
    common = dict(max_train_steps=6, checkpointing_steps=3, train_batch_size=4, learning_rate=3e-3, random_flip=True)
    straight = tmp_path / "ddp"
    result = _launch_two_processes(tiny_args(sprites_dir, tiny_unet_config, straight, **common))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "6 optimizer steps, 4 per epoch, 4 x 2 processes" in result.stdout
    assert result.stdout.count("pipeline saved to") == 1  # printed once, by the main process
    assert json.loads((straight / "results.json").read_text())["num_processes"] == 2
    assert [p.name for p in list_checkpoints(str(straight))] == ["checkpoint-3", "checkpoint-6"]
    metrics = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "train_loss" in m] == [1, 2, 3, 4, 5, 6]  # one log, not one per process
    from diffusers import DiffusionPipeline

    assert DiffusionPipeline.from_pretrained(straight).unet.config.sample_size == 16
    # N straight == N/2 + resume + N/2, under two processes too (step 3 is mid-epoch).
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    result = _launch_two_processes(tiny_args(sprites_dir, tiny_unet_config, resumed, resume_from_checkpoint="latest",
                                             **common))
    assert result.returncode == 0, result.stderr[-3000:]
    a = load_file(straight / "checkpoint-6" / "unet.safetensors")
    b = load_file(resumed / "checkpoint-6" / "unet.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], v) for k, v in load_file(straight / "checkpoint-3" / "unet.safetensors").items())
    # One process of batch 8 sees the same images every step; only the noise draws differ, so the
    # validation losses agree closely while training moves them far more.
    single = tmp_path / "single"
    run_training(tiny_args(sprites_dir, tiny_unet_config, single, **{**common, "train_batch_size": 8}))

    def val_losses(folder):
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return {m["step"]: m["val_loss"] for m in records if m.get("val_loss") is not None}

    two, one = val_losses(straight), val_losses(single)
    assert two.keys() == one.keys() == {4, 6}
    assert all(abs(two[s] / one[s] - 1) < 0.03 for s in two), (two, one)
    assert abs(two[6] / two[4] - 1) > 0.05  # training moved the loss more than the two runs differ


def test_two_processes_share_each_global_batch():
    """Process p of P takes a strided share of the same global batch one process of batch P*B takes."""
    from smallgen.data import ShuffledIndexBatches

    single = list(ShuffledIndexBatches(40, 8, seed=3).epoch(1))
    shares = [list(ShuffledIndexBatches(40, 4, seed=3, num_processes=2, process_index=p).epoch(1)) for p in (0, 1)]
    assert len(single) == len(shares[0]) == len(shares[1]) == 5
    for whole, a, b in zip(single, *shares):
        assert sorted(torch.cat([a, b]).tolist()) == sorted(whole.tolist()) and not set(a.tolist()) & set(b.tolist())


def test_push_to_hub_with_the_real_client_against_a_local_endpoint(sprites_dir, tiny_unet_config, tmp_path):
    from tests.fakehub import FakeHub

    out = tmp_path / "pushed-model"
    token = "hf_local_test_token_123"
    argv = tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=2, checkpointing_steps=1,
                     push_to_hub=True, hub_token=token, hub_private_repo=True, logger="tensorboard")
    with FakeHub() as hub:
        result = _script("train_unconditional.py", *argv, env={"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"})
        assert result.returncode == 0, result.stderr[-3000:]
    assert "pushed to the Hub as test-user/pushed-model" in result.stdout
    assert hub.repos == [{"name": "pushed-model", "organization": None, "visibility": "private"}]
    writes = [r for r in hub.requests if r["method"] == "POST" and ("/api/repos/" in r["path"] or "/api/models/" in r["path"])]
    assert len(writes) >= 3  # create, preupload, commit
    assert all({k.lower(): v for k, v in r["headers"].items()}.get("authorization") == f"Bearer {token}" for r in writes)
    uploaded = set(hub.files)
    assert {"model_index.json", "unet/diffusion_pytorch_model.safetensors", "unet/config.json",
            "scheduler/scheduler_config.json", "README.md", "loss_curves.png"} <= uploaded
    assert not any(p.startswith(("checkpoint-", "logs/")) for p in uploaded)
    assert hub.files["unet/diffusion_pytorch_model.safetensors"] == (
        out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    # The token is sent, never written: not in the run folder, the logs or the uploaded files.
    for path in out.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    assert not any(token.encode() in content for content in hub.files.values())
    assert b'DiffusionPipeline.from_pretrained("test-user/pushed-model")' in hub.files["README.md"]


def test_unreachable_hub_keeps_the_pipeline(sprites_dir, tiny_unet_config, tmp_path):
    out = tmp_path / "model"
    argv = tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=1, checkpointing_steps=1,
                     push_to_hub=True, hub_token="hf_x")
    result = _script("train_unconditional.py", *argv, env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: could not push")
    assert "The trained pipeline is safe in the output folder" in result.stderr
    assert (out / "model_index.json").exists() and (out / "unet" / "diffusion_pytorch_model.safetensors").exists()


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_recipe_parses_and_builds_its_network(recipe):
    from models.unet import create_unet
    from smallgen.config import parse_args

    data_args, diffusion_args, train_args = parse_args(["--config", str(ROOT / "configs" / recipe)])
    from smallgen.data import Labels
    from smallgen.trainer import build_objective

    labels = Labels(torch.arange(10), [f"class {i}" for i in range(10)]) if diffusion_args.class_conditional else None
    objective = build_objective(data_args, diffusion_args, train_args, labels)  # every check, no file touched
    assert all(sum(p.numel() for p in n.parameters()) > 1e5 for n in objective.networks.values())
    if diffusion_args.model_type != "ddpm":
        return
    unet = create_unet(diffusion_args.model_config_name_or_path, data_args.resolution)
    assert unet.config.sample_size == data_args.resolution
    if recipe == "cifar10-ddpm-paper.yaml":
        assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == 35.7
        assert (train_args.learning_rate, train_args.lr_warmup_steps, train_args.ema_max_decay) == (2e-4, 5000, 0.9999)


def test_throughput_benchmark_runs_on_cpu(tmp_path):
    result = _script("benchmarks/train_throughput.py", "--model", "configs/models/unet-tiny.json", "--batch_size", "2",
                     "--steps", "1", "--warmup", "1", "--output_json", tmp_path / "b.json")
    assert result.returncode == 0, result.stderr[-2000:]
    numbers = json.loads((tmp_path / "b.json").read_text())
    assert numbers["ours_images_per_second"] > 0 and numbers["diffusers_example_images_per_second"] > 0
    assert numbers["ours_real_loop_images_per_second"] > 0
    assert numbers["ratio"] == pytest.approx(numbers["ours_images_per_second"] / numbers["diffusers_example_images_per_second"])


def test_lazy_and_on_device_feeding_train_identically(sprites_dir, tiny_unet_config, tmp_path):
    # The datasets-transform path (large datasets) and the uint8-tensor path give the same batches.
    for mode in ("yes", "no"):
        run_training(tiny_args(sprites_dir, tiny_unet_config, tmp_path / mode, max_train_steps=3,
                               checkpointing_steps=3, random_flip=True, dataset_on_device=mode))
    a = load_file(tmp_path / "yes" / "checkpoint-3" / "unet.safetensors")
    b = load_file(tmp_path / "no" / "checkpoint-3" / "unet.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _snapshot(folder):
    """Every file's bytes under ``folder`` (paths relative to it)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_arguments_leave_the_old_run_untouched(sprites_dir, tiny_unet_config, tmp_path):
    out = tmp_path / "run"
    run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=2, checkpointing_steps=1,
                           save_images_epochs=1))
    before = _snapshot(out)
    assert any(k.startswith("checkpoint-") for k in before) and "metrics.jsonl" in before
    bad = [
        (dict(model_config_name_or_path="./no/such/unet.json"), ConfigError, "does not exist"),
        (dict(train_data_dir=tmp_path / "no-such-data"), UserError, "does not exist"),
        (dict(resolution=15), ConfigError, "halves the image"),
        (dict(model_type="vae", model_config_name_or_path=None, resolution=12), ConfigError, "power-of-two"),
    ]
    for overrides, error, message in bad:
        argv = tiny_args(sprites_dir, tiny_unet_config, out, **{"max_train_steps": 2, "overwrite_output_dir": True,
                                                                 **overrides})
        with pytest.raises(error, match=message):
            run_training(argv)
        assert _snapshot(out) == before, overrides


def test_missing_unet_config_is_one_clear_line(tmp_path):
    result = _script("train_unconditional.py", "--model_config_name_or_path", "configs/models/nope.json",
                     "--output_dir", tmp_path / "o")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: the UNet config 'configs/models/nope.json' does not exist (a JSON file, a name in configs/models/, "
        "a pipeline folder or a Hub id)"]
    assert not (tmp_path / "o").exists()


def test_resuming_a_finished_run_changes_nothing(sprites_dir, tiny_unet_config, tmp_path):
    out = tmp_path / "run"
    first = run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=4, checkpointing_steps=4,
                                   use_ema=True, save_images_epochs=1))
    before = _snapshot(out)
    again = run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=4, checkpointing_steps=4,
                                   use_ema=True, save_images_epochs=1, resume_from_checkpoint="latest"))
    assert _snapshot(out) == before  # no step, no new sample, no rewritten export or log
    assert again["global_step"] == first["global_step"] == 4 and again["train_loss"] == first["train_loss"]


def _launch_two_processes(argv, timeout=600):
    """Two real CPU processes (gloo): ``--cpu`` alone would start only one."""
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
         "train_unconditional.py", *argv],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"},
    )


@pytest.mark.parametrize("model_type", ["ddpm", "vae", "dcgan", "vaegan"])
def test_exact_resume_after_kill_9(sprites_dir, tiny_unet_config, tmp_path, model_type):
    """A process killed with SIGKILL mid-run resumes from its latest checkpoint to the straight result."""
    import signal
    import time

    extra = {} if model_type == "ddpm" else dict(model_type=model_type, model_config_name_or_path=None,
                                                   base_channels=8, latent_dim=16, adam_beta1=0.5)
    common = dict(max_train_steps=24, checkpointing_steps=4, checkpoints_total_limit=2, random_flip=True,
                  logging_steps=10, **extra)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_training(tiny_args(sprites_dir, tiny_unet_config, straight, **common))
    argv = tiny_args(sprites_dir, tiny_unet_config, killed, **common)
    process = subprocess.Popen([sys.executable, "train_unconditional.py", *argv], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list_checkpoints(str(killed)) and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = list_checkpoints(str(killed))
    assert done and int(done[-1].name.split("-")[1]) < 24, "killed before the end, after a checkpoint"
    assert not (killed / "model_index.json").exists()
    run_training(tiny_args(sprites_dir, tiny_unet_config, killed, resume_from_checkpoint="latest", **common))
    for name in sorted(p.name for p in (straight / "checkpoint-24").glob("*.safetensors")):
        a, b = load_file(straight / "checkpoint-24" / name), load_file(killed / "checkpoint-24" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_help_is_a_manual():
    from smallgen.config import build_parser, help_groups

    parser = build_parser()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) > 60
    missing = [a.dest for a in flags if not (a.help or "").strip()]
    assert not missing, f"flags without a help text: {missing}"
    text = parser.format_help()
    assert "``" not in text
    first_flags = [line.split()[0] for line in text.splitlines() if line.strip().startswith("--")]
    assert first_flags[0] == "--config"
    titles = [line[:-1] for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert titles == ["options", *help_groups()], titles
    assert {"ddpm", "edm", "baselines"} <= set(help_groups())  # each model type's flags in its own
    general = parser._optionals._group_actions
    assert [a.dest for a in general] == ["help", "config"]  # every other flag sits in a group
    for action in flags:  # the default is stated once: by the formatter or by the help text itself
        shown = parser._get_formatter()._expand_help(action)
        assert shown.lower().count("default") <= 1, shown


def test_a_recipe_value_can_be_cleared(tmp_path):
    from smallgen.config import parse_args

    data_args, _, _ = parse_args(["--config", str(ROOT / "configs/quickstart.yaml"), "--dataset_name", "none",
                                  "--train_data_dir", str(tmp_path)])
    assert data_args.dataset_name is None and data_args.train_data_dir == str(tmp_path)
    recipe_value = parse_args(["--config", str(ROOT / "configs/quickstart.yaml")])[0].dataset_name
    assert recipe_value is not None  # the recipe does set it
