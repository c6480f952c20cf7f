"""What is measured: FID, KID, precision/recall (and IS) of uint8 images against a reference, by torch-fidelity.

A pure function of images and weights: it knows nothing of pipelines, flags or processes. Samples go
to torch-fidelity in memory as uint8, quantized exactly like saved PNGs; the reference's features
are cached under a name that says what they are (``smallgen.reference``).
"""

from __future__ import annotations

import torch


class UInt8Images(torch.utils.data.Dataset):
    """(N, 3, H, W) uint8 images as the Dataset torch-fidelity reads."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]



def compute_metrics(samples: torch.Tensor, reference, weights, *, cache_name: str | None, cache_root: str | None,
                    kid_subset_size: int, isc: bool = False, batch_size: int = 64, verbose: bool = True) -> dict:
    """FID, KID, precision and recall (and IS) of uint8 samples against a reference Dataset, by
    torch-fidelity. Precision and recall (Kynkäänniemi et al. 2019, 3 nearest neighbours) use the same
    Inception pool features as FID, not torch-fidelity's default VGG16, whose weights would be a second
    download: a GAN's dropped modes show as low recall beside its FID."""
    import torch_fidelity

    metrics = torch_fidelity.calculate_metrics(
        input1=UInt8Images(samples), input2=reference, cuda=torch.cuda.is_available(),
        feature_extractor="inception-v3-compat", fid=True, kid=True, prc=True, isc=isc,
        kid_subset_size=kid_subset_size, batch_size=batch_size,
        feature_extractor_weights_path=weights.path, save_cpu_ram=True, verbose=verbose,
        cache=cache_name is not None, cache_root=cache_root,
        input2_cache_name=None if cache_name is None else f"{cache_name}-{weights.tag}",
    )
    out = {"fid": float(metrics["frechet_inception_distance"]),
           "kid_mean": float(metrics["kernel_inception_distance_mean"]),
           "kid_std": float(metrics["kernel_inception_distance_std"]),
           "precision": float(metrics["precision"]), "recall": float(metrics["recall"])}
    if isc:
        out["isc_mean"] = float(metrics["inception_score_mean"])
        out["isc_std"] = float(metrics["inception_score_std"])
    return out
