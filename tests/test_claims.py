"""Tests that guard the README's promises; each was seen to fail with its bug planted.

``tools/mutations.py`` plants those bugs one at a time and runs these tests (``docs/claims.md``
maps every promise to its tests).
"""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from smallgen.data import SPRITES_IMAGES_FILE
from smallgen.testing import write_sprites_npy
from tests.conftest import write_tiny_unet_config
from tests.helpers import run_training, tiny_args

TINIEST_LR = 1e-20  # an "update" this small leaves float32 weights unchanged: every step sees the same network


@pytest.fixture(scope="module")
def identical_images_dir(tmp_path_factory):
    """32 copies of one sprite: data order and batches cannot make two steps differ."""
    folder = tmp_path_factory.mktemp("identical")
    images, _ = write_sprites_npy(str(folder), num_images=1, seed=3, with_labels=False)
    np.save(folder / SPRITES_IMAGES_FILE, np.repeat(images, 32, axis=0))
    return folder


@pytest.fixture(scope="module")
def no_dropout_unet_config(tmp_path_factory):
    return write_tiny_unet_config(tmp_path_factory.mktemp("cfg"), dropout=0.0)


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


BASELINE_OVERRIDES = dict(model_config_name_or_path=None, base_channels=8, latent_dim=16, adam_beta1=0.5)


@pytest.mark.parametrize("model_type", ["ddpm", "vae", "dcgan"])
def test_every_step_draws_fresh_noise(identical_images_dir, no_dropout_unet_config, tmp_path, model_type):
    # Same images, same (frozen) network: a step's loss differs from the last only through its own
    # noise, timesteps and latents, which must come from (seed, step, ...), not repeat every step.
    extra = {} if model_type == "ddpm" else dict(BASELINE_OVERRIDES, model_type=model_type)
    out = tmp_path / model_type
    run_training(tiny_args(identical_images_dir, no_dropout_unet_config, out, max_train_steps=4,
                           validation_fraction=0.0, learning_rate=TINIEST_LR, lr_scheduler="constant",
                           lr_warmup_steps=0, max_grad_norm=0, checkpointing_steps=None, **extra))
    key = "d_loss" if model_type == "dcgan" else "train_loss"
    losses = [m[key] for m in _metrics(out) if key in m]
    assert len(losses) == 4
    spread = max(losses) / min(losses) - 1
    assert spread > 1e-3, f"the same loss every step ({losses}): the per-step noise does not depend on the step"


def test_lr_schedule_counts_optimizer_steps(sprites_dir, tiny_unet_config, tmp_path):
    from diffusers.optimization import get_scheduler

    out = tmp_path / "run"
    run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=6, gradient_accumulation_steps=2,
                           lr_scheduler="linear", lr_warmup_steps=3, learning_rate=1e-3, checkpointing_steps=None))
    logged = {m["step"]: m["lr"] for m in _metrics(out) if "lr" in m}
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    reference = get_scheduler("linear", optimizer=optimizer, num_warmup_steps=3, num_training_steps=6)
    expected = {}
    for step in range(1, 7):
        optimizer.step()
        reference.step()
        expected[step] = reference.get_last_lr()[0]
    assert logged == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("model_type", ["ddpm", "vae"])
def test_validation_loss_uses_the_validation_images_as_they_are(sprites_dir, tiny_unet_config, tmp_path, model_type):
    """The logged val_loss equals the loss recomputed here on the unflipped validation images."""
    from smallgen.config import parse_args
    from smallgen.data import decode_to_uint8, load_image_datasets, uint8_to_model_range
    from smallgen.seeding import VALIDATION_SEED

    extra = {} if model_type == "ddpm" else dict(BASELINE_OVERRIDES, model_type=model_type)
    out = tmp_path / "run"
    argv = tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=3, random_flip=True, eval_batch_size=4,
                     checkpointing_steps=None, **extra)
    results = run_training(argv)
    data_args, model_args, _ = parse_args(argv)
    data = load_image_datasets(data_args)
    images = uint8_to_model_range(decode_to_uint8(data.validation, data.image_column, data_args, show_progress=False))
    assert len(images) >= 8  # several batches, none flipped
    total = 0.0
    if model_type == "ddpm":
        from diffusers import UNet2DModel

        from models.losses import DiffusionLoss
        from models.schedulers import NoiseSchedule

        unet = UNet2DModel.from_pretrained(out / "unet").eval()
        schedule = NoiseSchedule(model_args.ddpm_num_steps, model_args.beta_start, model_args.beta_end,
                                 model_args.ddpm_beta_schedule, model_args.prediction_type)
        loss = DiffusionLoss(schedule)
        with torch.no_grad():
            for b, start in enumerate(range(0, len(images), 4)):
                clean = images[start:start + 4]
                generator = torch.Generator().manual_seed(VALIDATION_SEED + b)
                total += loss(lambda x, t: unet(x, t).sample, clean, generator).mean().item() * len(clean)
    else:
        from models.losses import gaussian_kl, reconstruction_error
        from pipelines import VAEPipeline

        vae = VAEPipeline.from_pretrained(out).vae.eval()
        with torch.no_grad():
            for b, start in enumerate(range(0, len(images), 4)):
                clean = images[start:start + 4]
                generator = torch.Generator().manual_seed(VALIDATION_SEED + b)
                noise = torch.randn((len(clean), model_args.latent_dim), generator=generator)
                reconstruction, mean, logvar, _ = vae(clean, noise)
                loss = reconstruction_error(reconstruction, clean) + model_args.kl_weight * gaussian_kl(mean, logvar)
                total += loss.mean().item() * len(clean)
    assert results["val_loss"] == pytest.approx(total / len(images), rel=1e-6)


def test_reference_cache_key_names_dataset_split_resolution_count_and_seed(sample_cifar10, tmp_path):
    from smallgen.evaluation import EvaluationArguments
    from smallgen.reference import load_reference

    def key(**overrides):
        values = dict(samples_dir=str(tmp_path), dataset_name=sample_cifar10, split="train", resolution=16,
                      num_reference=20)
        values.update(overrides)
        return load_reference(EvaluationArguments(**values))[1]

    base = key()
    assert base == key()  # the same request finds the same cache
    variants = [key(resolution=32), key(resolution=8), key(split="test"), key(num_reference=30),
                key(reference_seed=1), key(interpolation="nearest")]
    assert len({base, *variants}) == 1 + len(variants), [base, *variants]
    other = tmp_path / "copy"
    import shutil

    shutil.copytree(sample_cifar10, other)
    assert key(dataset_name=str(other)) != base  # another dataset, even with the same name


def test_reference_features_are_cached_once_per_weights_as_safetensors(tmp_path, monkeypatch):
    """Features differ slightly between weight files: each file has its own cache entry, read back
    without extracting again, stored as safetensors (torch-fidelity's own cache is a pickle)."""
    from safetensors.torch import load_file

    from smallgen import scores
    from smallgen.inception import InceptionWeights

    extracted = []

    def fake_features(images, weights, **kwargs):
        extracted.append(weights.tag)
        return {scores.POOL: torch.full((len(images), 2048), float(len(extracted)))}

    monkeypatch.setattr(scores, "inception_features", fake_features)
    reference = scores.UInt8Images(torch.zeros((3, 3, 8, 8), dtype=torch.uint8))
    cache = tmp_path / "cache"

    def features(tag):
        weights = InceptionWeights(path="x", source="test", has_classifier=False, tag=tag)
        return scores.reference_features(reference, weights, cache_name="ref", cache_root=str(cache), verbose=False)

    a, b, a_again = features("weights-a"), features("weights-b"), features("weights-a")
    assert extracted == ["weights-a", "weights-b"]  # the third call read the cache
    assert torch.equal(a, a_again) and not torch.equal(a, b)
    assert sorted(p.name for p in cache.iterdir()) == ["ref-weights-a.safetensors", "ref-weights-b.safetensors"]
    assert torch.equal(load_file(cache / "ref-weights-b.safetensors")["features"], b)
    (cache / "ref-weights-a.safetensors").write_bytes(b"not safetensors")  # a broken entry is made again
    assert torch.equal(features("weights-a"), torch.full((3, 2048), 3.0)) and len(extracted) == 3


def test_a_failed_save_never_leaves_a_checkpoint_folder(sprites_dir, tiny_unet_config, tmp_path, monkeypatch):
    """Checkpoints appear whole or not at all: a save that dies part-way leaves no checkpoint-N."""
    import errno

    out = tmp_path / "run"
    real_dump = json.dump

    def dump_failing_at_step_4(obj, fp, *args, **kwargs):
        if "checkpoint-4" in str(getattr(fp, "name", "")):
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        return real_dump(obj, fp, *args, **kwargs)

    monkeypatch.setattr(json, "dump", dump_failing_at_step_4)
    from smallgen.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match=r"could not write .*checkpoint-4 \(.*No space left on device "
                                              r"\(simulated\)\); the latest checkpoint is still .*checkpoint-2"):
        run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=6, checkpointing_steps=2))
    monkeypatch.setattr(json, "dump", real_dump)
    assert (out / "checkpoint-2").is_dir()
    assert not (out / "checkpoint-4").exists(), "a half-written checkpoint-4 would be taken as the latest"
    assert not (out / "checkpoint-4.tmp").exists()  # cleaned up, not left to fill the disk
    run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=6, checkpointing_steps=2,
                           resume_from_checkpoint="latest"))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


def _diverging(**overrides):
    return dict(max_train_steps=30, checkpointing_steps=1, learning_rate=1e30, lr_warmup_steps=0,
                lr_scheduler="constant", max_grad_norm=0, adam_epsilon=1e-30, **overrides)


def _assert_checkpoints_finite(out):
    checkpoints = sorted(out.glob("checkpoint-*"))
    for checkpoint in checkpoints:
        for weights in checkpoint.glob("*.safetensors"):
            tensors = load_file(weights)
            assert all(torch.isfinite(t).all() for t in tensors.values()), f"non-finite weights in {weights}"
    assert not (out / "model_index.json").exists()  # nothing exported from a diverged run


def test_no_nan_reaches_a_checkpoint_between_logging_steps(sprites_dir, tiny_unet_config, tmp_path):
    from smallgen.trainer import TrainingDiverged

    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged):
        run_training(tiny_args(sprites_dir, tiny_unet_config, out, **_diverging(logging_steps=100)))
    _assert_checkpoints_finite(out)


@pytest.mark.parametrize("model_type", ["vae", "dcgan", "vaegan"])
def test_baselines_stop_on_divergence(sprites_dir, tmp_path, model_type):
    from smallgen.trainer import TrainingDiverged

    out = tmp_path / model_type
    with pytest.raises(TrainingDiverged):
        run_training(tiny_args(sprites_dir, None, out, **_diverging(**BASELINE_OVERRIDES, model_type=model_type)))
    _assert_checkpoints_finite(out)


class _InfiniteGradient(torch.autograd.Function):
    """Passes the loss through unchanged; its gradient comes back infinite."""

    @staticmethod
    def forward(ctx, value):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def test_an_inf_gradient_at_a_checkpoint_step_is_never_saved(sprites_dir, tiny_unet_config, tmp_path, monkeypatch):
    """The loss stays finite, the step-3 gradient is inf: the weights are checked before saving."""
    from models.losses import DiffusionLoss
    from smallgen.trainer import TrainingDiverged

    real_call = DiffusionLoss.__call__
    calls = []

    def call(self, net, images, generator):
        loss = real_call(self, net, images, generator)
        if torch.is_grad_enabled():  # training, not validation
            calls.append(1)
            if len(calls) == 3:
                return _InfiniteGradient.apply(loss)
        return loss

    monkeypatch.setattr(DiffusionLoss, "__call__", call)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="weights became non-finite by step 3.*checkpoint-2"):
        run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=6, checkpointing_steps=1,
                               logging_steps=100, max_grad_norm=0))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    _assert_checkpoints_finite(out)


class _Trap:
    """Unpickling this creates ``marker``: proof that a checkpoint file was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_a_checkpoint_cannot_run_code(sprites_dir, tiny_unet_config, tmp_path, capfd):
    """Every checkpoint file replaced in turn by a code-running pickle: resuming never unpickles it."""
    import pickle
    import shutil

    from smallgen.errors import UserError

    marker = tmp_path / "code-ran"
    payload = pickle.dumps(_Trap(str(marker)))
    pickle.loads(payload)  # the trap is live: unpickling it does create the marker
    assert marker.exists()
    marker.unlink()
    source = tmp_path / "source"
    common = dict(max_train_steps=3, checkpointing_steps=1, use_ema=True)
    run_training(tiny_args(sprites_dir, tiny_unet_config, source, **{**common, "max_train_steps": 2}))
    names = sorted(p.name for p in (source / "checkpoint-2").iterdir())
    assert names == ["training_state.json", "training_state.safetensors", "unet.safetensors"]
    for name in [*names, "random_states_0.pkl", "optimizer.bin"]:  # the last two: extra files, as accelerate wrote
        for resume in ("latest", "named"):
            run = tmp_path / f"{name}-{resume}"
            shutil.copytree(source, run)
            (run / "checkpoint-2" / name).write_bytes(payload)
            where = "latest" if resume == "latest" else str(run / "checkpoint-2")
            try:
                run_training(tiny_args(sprites_dir, tiny_unet_config, run, resume_from_checkpoint=where, **common))
                outcome = "resumed"
            except UserError as error:
                outcome = str(error)
                assert "checkpoint-2" in outcome and name in outcome, outcome
            assert not marker.exists(), f"{name} ({resume}) was unpickled"
            if name in names and resume == "latest":  # the damaged newest is skipped, the one before used
                assert outcome == "resumed" and f"skipping {run / 'checkpoint-2'}" in capfd.readouterr().err
            if name not in names:  # extra files are ignored, and named in a warning
                assert outcome == "resumed" and f"ignoring {name}" in capfd.readouterr().err


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_latest(sprites_dir, tiny_unet_config, tmp_path):
    """SIGKILL right after the first file of checkpoint-4 is written: no checkpoint-4, resume from 2."""
    import os
    import subprocess
    import sys

    from smallgen.checkpoints import list_checkpoints, resolve_resume_checkpoint
    from tests.conftest import ROOT

    out = tmp_path / "run"
    argv = [str(a) for a in tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=6, checkpointing_steps=2)]
    killer = (
        "import os, sys, safetensors.torch as st\n"
        "write = st.save_file\n"
        "def save_file(tensors, filename, *args, **kwargs):\n"
        "    write(tensors, filename, *args, **kwargs)\n"
        "    if 'checkpoint-4' in str(filename):\n"
        "        os.kill(os.getpid(), 9)\n"
        "st.save_file = save_file\n"
        "from smallgen.trainer import main\n"
        f"main({argv!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", killer], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == -9, result.stderr[-2000:]
    assert not (out / "checkpoint-4").exists(), "a half-written checkpoint-4 would be taken as the latest"
    assert [p.name for p in list_checkpoints(str(out))] == ["checkpoint-2"]
    assert resolve_resume_checkpoint("latest", str(out)).name == "checkpoint-2"
    run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=6, checkpointing_steps=2,
                           resume_from_checkpoint="latest"))
    assert [p.name for p in list_checkpoints(str(out))] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert not list(out.glob("*.tmp"))


def test_the_reference_subset_is_drawn_with_reference_seed(sample_cifar10, tmp_path):
    from smallgen.evaluation import EvaluationArguments
    from smallgen.reference import load_reference, reference_indices

    def indices(seed):
        args = EvaluationArguments(samples_dir=str(tmp_path), dataset_name=sample_cifar10, resolution=16,
                                   num_reference=20, reference_seed=seed)
        reference, _, _ = load_reference(args)
        return reference.indices

    total = len(load_reference(EvaluationArguments(samples_dir=str(tmp_path), dataset_name=sample_cifar10,
                                                   resolution=16))[0])
    assert list(indices(1)) == list(reference_indices(total, 20, 1))
    assert list(indices(1)) != list(indices(2))
