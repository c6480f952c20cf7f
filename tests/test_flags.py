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
    objective = build_objective(*_parsed(sprites_dir, tiny_unet_config, tmp_path, adam_weight_decay=0.123, **extra))
    objective.accelerator = CPU  # what make_optimizers reads of it: the device
    optimizers = objective.make_optimizers()
    assert optimizers and all(group["weight_decay"] == 0.123 for o in optimizers.values() for group in o.param_groups)
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
