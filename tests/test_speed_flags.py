"""The flags a GPU run depends on, run on the CPU so that a GPU session cannot be the first to try them:
``--torch_compile`` (inductor), ``--mixed_precision bf16`` and ``--channels_last``, each for a diffusion
model and a GAN. Each trains, resumes exactly, follows the plain fp32 run and exports plain weights."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_tiny_unet_config
from tests.helpers import assert_same_checkpoint, run_training, tiny_args

SPEED_FLAGS = {"compile": {"torch_compile": True}, "bf16": {"mixed_precision": "bf16"},
               "channels_last": {"channels_last": True}}
WEIGHTS = {"ddpm": ("unet.safetensors", "unet/diffusion_pytorch_model.safetensors"),
           "dcgan": ("generator.safetensors", "decoder/diffusion_pytorch_model.safetensors")}


def flags(kind, data_dir, unet_config, output_dir, **extra):
    """Four steps, a checkpoint after two. No dropout: compiled code draws its own random numbers."""
    model = {"model_type": "dcgan", "base_channels": 8, "latent_dim": 16} if kind == "dcgan" else {}
    return tiny_args(data_dir, unet_config if kind == "ddpm" else None, output_dir, max_train_steps=4,
                     checkpointing_steps=2, **model, **extra)


@pytest.fixture(scope="module")
def unet_without_dropout(tmp_path_factory):
    return write_tiny_unet_config(tmp_path_factory.mktemp("cfg"), dropout=0.0)


@pytest.fixture(scope="module")
def plain_runs(sprites_dir, unet_without_dropout, tmp_path_factory):
    """The fp32, eager, contiguous run of each model type."""
    folder = tmp_path_factory.mktemp("plain")
    for kind in WEIGHTS:
        run_training(flags(kind, sprites_dir, unet_without_dropout, folder / kind))
    return folder


@pytest.fixture
def layouts(monkeypatch):
    """Per run: whether each network's 4-d weights are channels_last once set up (seen as its lr schedules
    are made, after the optimizers took the parameters)."""
    from smallgen.objectives.base import Objective

    seen, make_schedules = [], Objective.make_schedules

    def spy(self, max_train_steps):
        seen.append({name: all(p.is_contiguous(memory_format=torch.channels_last)
                               for p in network.parameters() if p.dim() == 4)
                     for name, network in self.networks.items()})
        return make_schedules(self, max_train_steps)

    monkeypatch.setattr(Objective, "make_schedules", spy)
    return seen


def weights(folder, name):
    return load_file(folder / name)


def largest_difference(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def distance(a, b):
    """The L2 norm of the difference of every weight."""
    return torch.cat([(a[k].float() - b[k].float()).flatten() for k in a]).norm().item()


CASES = [pytest.param(flag, kind, id=f"{flag}-{kind}",
                      # inductor compiles the UNet's forward and backward for about 70 s on 2 cores
                      marks=[pytest.mark.slow] if (flag, kind) == ("compile", "ddpm") else [])
         for flag in sorted(SPEED_FLAGS) for kind in sorted(WEIGHTS)]


@pytest.mark.parametrize("speed_flag, kind", CASES)
def test_a_speed_flag_trains_resumes_exactly_and_exports_plain_weights(kind, speed_flag, sprites_dir,
                                                                       unet_without_dropout, plain_runs, tmp_path,
                                                                       layouts):
    from torch._dynamo.utils import counters

    checkpointed, exported = WEIGHTS[kind]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    graphs = counters["stats"]["unique_graphs"]
    run_training(flags(kind, sprites_dir, unet_without_dropout, straight, **SPEED_FLAGS[speed_flag]))
    assert (counters["stats"]["unique_graphs"] > graphs) == (speed_flag == "compile")  # the flag took effect
    assert all(all(run.values()) for run in layouts) == (speed_flag == "channels_last"), layouts
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    run_training(flags(kind, sprites_dir, unet_without_dropout, resumed, resume_from_checkpoint="latest",
                       **SPEED_FLAGS[speed_flag]))
    assert_same_checkpoint(straight / "checkpoint-4", resumed / "checkpoint-4")  # networks, optimizers, EMA

    ours = weights(straight / "checkpoint-4", checkpointed)

    plain = weights(plain_runs / kind / "checkpoint-4", checkpointed)
    if speed_flag == "bf16":  # other rounding: closer to the fp32 run than its last two steps moved (~7% seen)
        moved = distance(plain, weights(plain_runs / kind / "checkpoint-2", checkpointed))
        assert distance(plain, ours) < 0.25 * moved, (distance(plain, ours), moved)
    else:  # the same arithmetic in another order or layout: within a tenth of one Adam step (lr 1e-3)
        assert largest_difference(plain, ours) <= 1e-4, largest_difference(plain, ours)  # seen: 0 and 1.6e-5

    exported_plain, exported_ours = (weights(run / kind if run is plain_runs else run, exported)
                                     for run in (plain_runs, straight))
    assert exported_ours.keys() == exported_plain.keys()  # no _orig_mod. or module. prefixes
    assert all(t.dtype == exported_plain[k].dtype and t.is_contiguous() for k, t in exported_ours.items())
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(straight, trust_remote_code=True)
    images = pipeline(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np",
                      **({"num_inference_steps": 3} if kind == "ddpm" else {})).images
    assert images.shape == (2, 16, 16, 3) and (images >= 0).all() and (images <= 1).all()
