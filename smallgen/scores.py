"""What is measured: FID, KID, precision/recall (and IS), in two layers.

- ``inception_features``: uint8 images to Inception features (torch-fidelity's extractor, laid out for speed by
  ``smallgen.inception_speed``: the same features to 1e-5). Samples are
  quantized exactly like saved PNGs, so a folder and a pipeline score alike.
- ``metrics_from_features``: pure math on features (torch-fidelity's feature-level functions, its
  defaults: 100 KID subsets, 3 nearest neighbours, seed 2020; FID of small sets by ``frechet_distance``,
  the same number twenty times sooner).

``reference_features`` extracts a reference once and caches it as safetensors (torch-fidelity's own
cache is a pickle) under a name that says what it is and which weights made it (``smallgen.reference``).
``compute_metrics`` joins the three. Nothing here knows of pipelines, flags or processes.
"""

from __future__ import annotations

import functools
import os
import sys

import torch

POOL = "2048"  # Inception pool features: FID, KID, precision/recall
LOGITS = "logits_unbiased"  # classifier logits: the Inception Score


class UInt8Images(torch.utils.data.Dataset):
    """(N, 3, H, W) uint8 images as the Dataset torch-fidelity reads."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


FEATURE_BATCH = 32  # images per extractor call: the fastest on a 2-core CPU (16 and 64 were slower)


@functools.lru_cache(maxsize=2)
def _extractor(weights_path: str, layers: tuple[str, ...], device: str):
    """torch-fidelity's extractor, laid out for speed (``smallgen.inception_speed``); one per weights file
    and layers: evaluation while training calls it many times."""
    from torch_fidelity.utils import create_feature_extractor

    from smallgen.inception_speed import FastInceptionV3

    extractor = create_feature_extractor("inception-v3-compat", list(layers), cuda=False,
                                         feature_extractor_weights_path=weights_path, verbose=False)
    return FastInceptionV3(extractor).to(device)


def inception_features(images, weights, *, logits: bool = False, batch_size: int = FEATURE_BATCH,
                       verbose: bool = True) -> dict[str, torch.Tensor]:
    """``{POOL: (N, 2048)}`` (and ``{LOGITS: (N, 1008)}``) float32 CPU features of uint8 images, given as an
    (N, 3, H, W) tensor or a Dataset of them, ``batch_size`` at a time."""
    from tqdm.auto import tqdm

    device = "cuda" if torch.cuda.is_available() else "cpu"
    layers = (POOL, LOGITS) if logits else (POOL,)
    extractor = _extractor(weights.path, layers, device)
    count = len(images)
    parts = {layer: [] for layer in layers}
    with tqdm(total=count, desc="Inception features", unit="img", leave=False, disable=not verbose) as bar:
        for start in range(0, count, batch_size):
            indices = range(start, min(start + batch_size, count))
            batch = images[start:indices.stop] if torch.is_tensor(images) else torch.stack([images[i] for i in indices])
            for layer, values in zip(layers, extractor(batch.to(device))):
                parts[layer].append(values.cpu())
            bar.update(len(indices))
    return {layer: torch.cat(values) for layer, values in parts.items()}


def reference_features(reference, weights, *, cache_name: str | None, cache_root: str | None,
                       batch_size: int = FEATURE_BATCH, verbose: bool = True) -> torch.Tensor:
    """The reference's pool features, read from ``cache_root/<cache_name>-<weights tag>.safetensors``
    when there, else extracted and written there (atomically: a killed run leaves no half file)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    if cache_name is None:
        return inception_features(reference, weights, batch_size=batch_size, verbose=verbose)[POOL]
    path = os.path.join(cache_root, f"{cache_name}-{weights.tag}.safetensors")
    if os.path.isfile(path):
        try:
            features = load_file(path)["features"]
            if features.shape == (len(reference), 2048):
                return features
        except (SafetensorError, KeyError, OSError):
            pass
        print(f"{path} is not what this reference makes: extracting its features again", file=sys.stderr)
    features = inception_features(reference, weights, batch_size=batch_size, verbose=verbose)[POOL]
    os.makedirs(cache_root, exist_ok=True)
    partial = f"{path}.{os.getpid()}.partial"
    save_file({"features": features.contiguous()}, partial, metadata={"weights": weights.source})
    os.replace(partial, path)
    return features


def frechet_distance(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """FID of two feature sets. Its trace term, tr sqrt(sigma_1 sigma_2), is the sum of the singular values of
    A B^T (A, B: each set's centred features / sqrt(n - 1); the nonzero eigenvalues of A^T A B^T B are those of
    A B^T B A^T). Where a set has fewer rows than features that matrix is small, and this takes a tenth of a
    second where torch-fidelity's eigenvalues of the 2048² product take two; else torch-fidelity's own."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    (n1, dim), n2 = samples.shape, reference.shape[0]
    if min(n1, n2) > dim or min(n1, n2) < 2:
        stats = fid_features_to_statistics(samples), fid_features_to_statistics(reference)
        return float(fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"])
    a, b = samples.double(), reference.double()
    mean_a, mean_b = a.mean(0), b.mean(0)
    centred_a = (a - mean_a) / (n1 - 1) ** 0.5
    centred_b = (b - mean_b) / (n2 - 1) ** 0.5
    diff = mean_a - mean_b
    trace_sqrt = torch.linalg.svdvals(centred_a @ centred_b.T).sum()
    return float(diff @ diff + centred_a.square().sum() + centred_b.square().sum() - 2 * trace_sqrt)


def metrics_from_features(samples: torch.Tensor, reference: torch.Tensor, *, kid_subset_size: int,
                          sample_logits: torch.Tensor | None = None, verbose: bool = False) -> dict:
    """FID, KID (mean and std over subsets), precision and recall (Kynkäänniemi et al. 2019, on the same
    Inception pool features as FID, not torch-fidelity's default VGG16, whose weights would be a second
    download: a GAN's dropped modes show as low recall beside its FID), and IS from logits if given."""
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    fid = frechet_distance(samples, reference)
    kid = kid_features_to_metric(samples, reference, kid_subset_size=kid_subset_size, verbose=verbose)
    prc = prc_features_to_metric(samples, reference, save_cpu_ram=True, verbose=verbose)  # samples first
    out = {"fid": fid,
           "kid_mean": float(kid["kernel_inception_distance_mean"]),
           "kid_std": float(kid["kernel_inception_distance_std"]),
           "precision": float(prc["precision"]), "recall": float(prc["recall"])}
    if sample_logits is not None:
        isc = isc_features_to_metric(sample_logits)
        out.update(isc_mean=float(isc["inception_score_mean"]), isc_std=float(isc["inception_score_std"]))
    return out


def compute_metrics(samples: torch.Tensor, reference, weights, *, cache_name: str | None, cache_root: str | None,
                    kid_subset_size: int, isc: bool = False, batch_size: int = FEATURE_BATCH, verbose: bool = True) -> dict:
    """``metrics_from_features`` of uint8 samples against a reference Dataset, its features cached."""
    sample = inception_features(samples, weights, logits=isc, batch_size=batch_size, verbose=verbose)
    real = reference_features(reference, weights, cache_name=cache_name, cache_root=cache_root,
                              batch_size=batch_size, verbose=verbose)
    return metrics_from_features(sample[POOL], real, kid_subset_size=kid_subset_size,
                                 sample_logits=sample.get(LOGITS), verbose=verbose)
