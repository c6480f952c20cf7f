"""Flags whose effect a test can see, each against an independent value: the flag's own value where the library
call takes it, the images as they were, or a run without the flag (#34)."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from tests.helpers import tiny_args

CPU = SimpleNamespace(device=torch.device("cpu"), num_processes=1, process_index=0, is_local_main_process=False)


def _parsed(sprites_dir, tiny_unet_config, tmp_path, **flags):
    from smallgen.config import parse_args

    return parse_args([str(a) for a in tiny_args(sprites_dir, tiny_unet_config, tmp_path / "run", **flags)])


def test_random_flip_mirrors_about_half_the_training_images_left_right(sprites_dir, tiny_unet_config, tmp_path):
    from smallgen.data import ImageFeeder, load_image_datasets

    data_args, _, train_args = _parsed(sprites_dir, tiny_unet_config, tmp_path, random_flip=True,
                                       train_batch_size=36)
    data = load_image_datasets(data_args)
    feeder = ImageFeeder(data.train, data.image_column, data_args, train_args, CPU)
    images, _ = next(feeder.epoch(0))
    flipped = feeder.augment(images, torch.Generator().manual_seed(0))
    kept = (flipped == images).flatten(1).all(1)
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    assert (kept | mirrored).all() and 9 <= int((~kept).sum()) <= 27  # 36 fair coins: about half
    plain = ImageFeeder(data.train, data.image_column, dataclasses.replace(data_args, random_flip=False),
                        train_args, CPU)
    assert torch.equal(plain.augment(images, torch.Generator().manual_seed(0)), images)


@pytest.mark.parametrize("model_type", ["ddpm", "dcgan"])
def test_adam_weight_decay_reaches_every_optimizer(sprites_dir, tiny_unet_config, tmp_path, model_type):
    from smallgen.trainer import build_objective

    extra = {} if model_type == "ddpm" else dict(model_type="dcgan", model_config_name_or_path=None, base_channels=8)
    objective = build_objective(*_parsed(sprites_dir, tiny_unet_config, tmp_path, adam_weight_decay=0.123,
                                         adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6, **extra))
    objective.accelerator = CPU  # what make_optimizers reads of it: the device
    optimizers = objective.make_optimizers()
    groups = [group for o in optimizers.values() for group in o.param_groups]
    assert groups and all(group["weight_decay"] == 0.123 for group in groups)
    assert all(group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6 for group in groups)  # --adam_beta1/2, _epsilon
    if model_type == "ddpm":  # decoupled, as the flag's help says
        assert all(isinstance(o, torch.optim.AdamW) for o in optimizers.values())


@pytest.mark.parametrize("model_type", ["ddpm", "vae"])
def test_gradient_clipping_bounds_the_first_update(sprites_dir, tiny_unet_config, tmp_path, model_type):
    """Adam's first step moves each weight by about lr whatever the gradient's scale, unless the gradient is
    clipped below its epsilon: --max_grad_norm 1e-12 makes the step about 1e-4 of the unclipped one. (No weight
    decay: the baselines' Adam adds it to the clipped gradient, where it would dominate.)"""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from smallgen.objectives.base import MicroBatch
    from smallgen.trainer import build_objective

    extra = {} if model_type == "ddpm" else dict(model_type="vae", model_config_name_or_path=None, base_channels=8)
    moved = {}
    for norm in (0, 1e-12):
        AcceleratorState._reset_state(reset_partial_state=True)
        torch.manual_seed(0)
        objective = build_objective(*_parsed(sprites_dir, tiny_unet_config, tmp_path, max_grad_norm=norm,
                                             lr_warmup_steps=0, lr_scheduler="constant", adam_weight_decay=0, **extra))
        objective.setup(Accelerator(cpu=True), 10)
        before = [p.detach().clone() for p in objective.trained_parameters()]
        images = torch.rand(4, 3, 16, 16) * 2 - 1
        objective.train_step([MicroBatch(images, torch.Generator().manual_seed(1))])
        moved[norm] = sum((p.detach() - b).abs().sum().item() for p, b in zip(objective.trained_parameters(), before))
    assert 0 < moved[1e-12] < 0.01 * moved[0], moved


def test_the_beta_range_and_variance_type_reach_the_loss_and_the_exported_scheduler(sprites_dir, tiny_unet_config,
                                                                                     tmp_path):
    """--beta_start, --beta_end: the training schedule's first and last beta (linear) and the exported
    scheduler's; --variance_type: the exported DDPMScheduler's."""
    from smallgen.trainer import build_objective

    objective = build_objective(*_parsed(sprites_dir, tiny_unet_config, tmp_path, beta_start=2e-4, beta_end=0.03,
                                         ddpm_beta_schedule="linear", variance_type="fixed_large"))
    betas = objective.loss.schedule.betas
    assert betas[0].item() == pytest.approx(2e-4) and betas[-1].item() == pytest.approx(0.03)
    objective.accelerator = SimpleNamespace(**vars(CPU), unwrap_model=lambda network: network)
    config = objective.make_pipeline("cpu").scheduler.config
    assert (config.beta_start, config.beta_end, config.variance_type) == (2e-4, 0.03, "fixed_large")


def test_max_dataset_bytes_decides_whether_the_images_live_on_the_device(sprites_dir, tiny_unet_config, tmp_path):
    """--dataset_on_device auto: 36 images of 3 x 16 x 16 bytes fit in the default budget, not in 1,000 bytes;
    no: never on the device; yes: always."""
    from smallgen.data import ImageFeeder, load_image_datasets

    for flags, on_device in (({}, True), ({"max_dataset_bytes": 1000}, False), ({"dataset_on_device": "no"}, False),
                             ({"dataset_on_device": "yes", "max_dataset_bytes": 1000}, True)):
        data_args, _, train_args = _parsed(sprites_dir, tiny_unet_config, tmp_path, **flags)
        data = load_image_datasets(data_args)
        assert ImageFeeder(data.train, data.image_column, data_args, train_args, CPU).on_device is on_device


def test_ddim_eta_reaches_the_grids_ddim_sampler(sprites_dir, tiny_unet_config, tmp_path):
    from smallgen.trainer import build_objective

    objective = build_objective(*_parsed(sprites_dir, tiny_unet_config, tmp_path, ddim_eta=0.4))
    assert objective.grid_samplers()["ddim"][2] == {"eta": 0.4}


def test_logger_logging_dir_and_logging_steps_decide_what_is_logged_where(sprites_dir, tiny_unet_config, tmp_path):
    """--logger tensorboard writes events under --logging_dir, --logger none writes none; --logging_steps 2
    over 4 steps logs the training loss at steps 2 and 4."""
    import json

    from tests.helpers import run_training

    out, quiet = tmp_path / "run", tmp_path / "quiet"
    run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=4, logger="tensorboard",
                           logging_dir="board", logging_steps=2))
    assert list((out / "board").rglob("events.out.tfevents.*")) and not (out / "logs").exists()
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in logged if "train_loss" in record] == [2, 4]
    run_training(tiny_args(sprites_dir, tiny_unet_config, quiet, max_train_steps=1, logger="none"))
    assert not list(quiet.rglob("events.out.tfevents.*"))


def test_cache_dir_holds_what_datasets_prepares(tmp_path):
    """--cache_dir: the datasets library prepares a local parquet dataset in it (not in ~/.cache)."""
    from smallgen.config import DataArguments
    from smallgen.data import load_image_datasets
    from tests.conftest import SAMPLE_CIFAR10

    load_image_datasets(DataArguments(dataset_name=str(SAMPLE_CIFAR10), resolution=16, cache_dir=str(tmp_path / "hf")))
    assert list((tmp_path / "hf").rglob("*.arrow"))
