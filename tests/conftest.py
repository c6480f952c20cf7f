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
