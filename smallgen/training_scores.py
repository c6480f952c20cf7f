"""Scores while training (``--evaluate_num_samples``): KID, FID, precision and recall of the model as it
trains, against the reference ``evaluate_fid.py`` would use, logged and drawn as a curve.

- Before the first step: the Inception weights and the reference split are found, or the run is refused
  with nothing written; the main process extracts the reference's features once (or reads them from
  the same safetensors cache ``evaluate_fid.py`` fills, ``smallgen.scores``).
- Each evaluation: every process draws its share of the samples with the model type's fast sampler
  through the exported pipeline (``Objective.evaluation_images``; the same seeds every time, so the
  curve moves with the model, not with the noise); the main process scores them all and broadcasts
  the scores, so every process holds the same numbers (``--keep_best`` decides from them).

KID is the curve to read at small sample counts: it is unbiased, FID is biased upwards by few samples.
"""

from __future__ import annotations

import math
import os
import time
from types import SimpleNamespace

import torch

from smallgen.errors import UserError
from smallgen.reference import load_reference, reference_description
from smallgen.scores import POOL, inception_features, metrics_from_features, reference_features

SCORES = ("kid", "kid_std", "fid", "precision", "recall")  # as logged: "evaluation/<name>"


def reference_arguments(data_args, args) -> SimpleNamespace:
    """The reference fields of evaluate_fid.py's arguments: the training data's ``--evaluate_split`` at the
    training resolution, a subset drawn as evaluate_fid.py draws it."""
    return SimpleNamespace(
        dataset_name=data_args.dataset_name, dataset_config_name=data_args.dataset_config_name,
        train_data_dir=data_args.train_data_dir, image_column=data_args.image_column,
        resolution=data_args.resolution, interpolation=data_args.interpolation, split=args.evaluate_split,
        num_reference=args.evaluate_num_reference or args.evaluate_num_samples, reference_seed=2020)


class TrainingScores:
    """What the trainer calls: ``prepare`` (before the plan), ``seconds`` (to plan) and ``score``."""

    def __init__(self, objective, accelerator, data_args, args):
        from smallgen.inception import default_cache_dir, resolve_inception_weights

        self.objective, self.accelerator, self.args = objective, accelerator, args
        self.cache = str(default_cache_dir())
        with accelerator.main_process_first():  # a download fills the cache once
            self.weights = resolve_inception_weights(args.inception_weights, self.cache)
        reference_args = reference_arguments(data_args, args)
        self.reference, self.cache_name, resolution = load_reference(reference_args)
        self.num_samples = args.evaluate_num_samples
        if len(self.reference) < 2:
            raise UserError(f"--evaluate_split {args.evaluate_split!r} holds {len(self.reference)} image: "
                            "the reference needs at least 2")
        self.kid_subset_size = min(1000, self.num_samples, len(self.reference))
        self.description = (f"{self.num_samples} samples against "
                            f"{reference_description(reference_args, len(self.reference), resolution)}")
        self.reference_features: torch.Tensor | None = None  # the main process's, after prepare()

    def prepare(self) -> None:
        """The reference's features, on the main process (extracted once, then read from the cache)."""
        if self.accelerator.is_main_process:
            self.reference_features = reference_features(
                self.reference, self.weights, cache_name=self.cache_name,
                cache_root=os.path.join(self.cache, "fidelity"), verbose=True)  # batches as evaluate_fid

    def seconds(self) -> float:
        """One evaluation, estimated on the main process from one timed batch: its share of the sampling
        plus the features of every sample (0 on the other processes)."""
        if not self.accelerator.is_main_process:
            return 0.0
        batch = min(self.args.eval_batch_size, self.num_samples)
        start = time.perf_counter()
        images = self.objective.evaluation_images(batch, self.args.seed, 0)
        drawn = time.perf_counter()
        inception_features(images, self.weights, batch_size=batch, verbose=False)
        featured = time.perf_counter()
        share = math.ceil(self.num_samples / self.accelerator.num_processes)
        return (drawn - start) * share / batch + (featured - drawn) * self.num_samples / batch

    def score(self) -> dict[str, float]:
        """Every process draws its share; the main process scores; every process returns the scores."""
        from accelerate.utils import broadcast, gather_object

        accelerator, n = self.accelerator, self.num_samples
        share = math.ceil(n / accelerator.num_processes)
        first = accelerator.process_index * share
        count = max(0, min(share, n - first))
        images = self.objective.evaluation_images(count, self.args.seed, first) if count else None
        if accelerator.num_processes > 1:
            images = torch.cat([part for part in gather_object([images]) if part is not None])
        values = torch.zeros(len(SCORES), dtype=torch.float64, device=accelerator.device)
        if accelerator.is_main_process:
            features = inception_features(images, self.weights, verbose=False)[POOL]  # batches as evaluate_fid
            metrics = metrics_from_features(features, self.reference_features, kid_subset_size=self.kid_subset_size)
            metrics["kid"] = metrics.pop("kid_mean")
            values = torch.tensor([metrics[k] for k in SCORES], dtype=torch.float64, device=accelerator.device)
        if accelerator.num_processes > 1:
            values = broadcast(values)
        return dict(zip(SCORES, values.tolist()))
