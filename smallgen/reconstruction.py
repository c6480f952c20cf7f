"""Post-hoc EMA, the command (``reconstruct_ema.py``): the EMAs of any lengths rebuilt from a run's snapshots,
each scored as the run scores itself, the best exported as the run's pipeline.

1. The snapshots in ``<run>/posthoc-ema/`` up to ``--step`` (default: the last) are combined into the profile
   of each ``--sigma_rel`` (``smallgen.posthoc_ema``: least squares over the profiles' densities), reading
   each file once.
2. Each EMA goes into the run's exported pipeline (the model type's ``exported_networks``, whose parameters
   are its trained parameters in turn) and is scored by evaluate_fid.py with the run's evaluation settings:
   its fast sampler, seed, reference split and subset; ``--num_samples`` defaults to the run's
   ``--evaluate_num_samples``. The export as trained (its fixed EMA) is scored the same way.
3. ``posthoc-ema/reconstruction.json``, the plot ``posthoc-ema.png`` and, unless ``--no_export``, the best
   EMA written over the run's pipeline (the trained export kept in ``posthoc-ema/trained-export.safetensors``,
   so a second call compares with it and nothing is lost), results.json and the model card told.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from types import SimpleNamespace
from typing import NamedTuple

import torch

from smallgen import posthoc_ema as phema
from smallgen.arguments import build_parser, check_flags, flag, parse_into
from smallgen.errors import ConfigError, UserError
from smallgen.files import read_json, save_json

TRAINED_EXPORT = "trained-export.safetensors"  # in posthoc-ema/: the export's weights before one was replaced
RESULTS = "reconstruction.json"  # in posthoc-ema/
PLOT = "posthoc-ema.png"  # in the run folder (the model card shows it)
SCORES = ("fid", "kid_mean", "kid_std", "precision", "recall")
SELECT = {"fid": "fid", "kid": "kid_mean"}
DESCRIPTION = """Choose a run's EMA length after training: rebuild post-hoc EMAs of each --sigma_rel from the snapshots
of a run trained with --posthoc_ema, score each as the run scores itself (beside the export as trained),
plot them and export the best over the run's pipeline."""


@dataclass
class ReconstructionArguments:
    run: str | None = flag(None, "The folder of a training run with --posthoc_ema.", group="run")
    sigma_rel: list[float] = flag([0.03, 0.05, 0.07, 0.10, 0.14, 0.20], "EMA lengths to rebuild and score, "
                                  "relative to the step (EDM2's sigma_rel).", group="run", above=0, below=12 ** -0.5)
    step: int | None = flag(None, "Rebuild the EMAs of this step (default: the last snapshot's).", group="run",
                            at_least=1)
    num_samples: int | None = flag(None, "Images scored per EMA (default: the run's --evaluate_num_samples).",
                                   group="scores", at_least=2)
    select: str = flag("fid", "The score that chooses the EMA to export.", group="scores", choices=tuple(SELECT))
    batch_size: int | None = flag(None, "Generation and Inception batch size (default: the run's "
                                        "--eval_batch_size).", group="scores", at_least=1)
    inception_weights: str | None = flag(None, "As evaluate_fid.py's (default: the run's --inception_weights).",
                                         group="scores")
    cache_dir: str | None = flag(None, "Cache of weights and reference features, as evaluate_fid.py's.",
                                 group="scores")
    device: str | None = flag(None, "cuda or cpu (default: cuda if available).", group="scores")
    export: bool = flag(True, "Write the best EMA over the run's pipeline (--no_export: score and plot only).",
                        group="output")

    def __post_init__(self):
        check_flags(self)
        if self.run is None:
            raise ConfigError("pass --run, the folder of a training run with --posthoc_ema")
        if len(set(self.sigma_rel)) != len(self.sigma_rel):
            raise ConfigError(f"--sigma_rel values must differ; got {self.sigma_rel}")


class Snapshot(NamedTuple):
    path: str
    step: int
    sigma_rels: tuple[float, ...]


def read_snapshot(path: str) -> Snapshot:
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as handle:
            metadata = handle.metadata() or {}
        return Snapshot(path, int(metadata["step"]), tuple(float(s) for s in metadata["sigma_rels"].split(",")))
    except Exception as exc:  # safetensors raises its own types for a broken file
        raise UserError(f"{path} is not a post-hoc EMA snapshot ({type(exc).__name__}: {exc}): remove it, or "
                        "train again from a checkpoint before it to write it again") from None


def find_snapshots(run: str, step: int | None) -> tuple[list[Snapshot], int]:
    """The snapshots a reconstruction at ``step`` uses and the step (default: the last). Later ones are left
    unread: least squares gives them no weight (on [0, step] a later profile has an earlier one's shape, and
    its mass after ``step`` is only error)."""
    folder = os.path.join(run, phema.SNAPSHOT_FOLDER)
    names = sorted(n for n in os.listdir(folder) if re.fullmatch(r"step-\d+\.safetensors", n)) \
        if os.path.isdir(folder) else []
    if not names:
        raise UserError(f"{folder} holds no post-hoc EMA snapshots: train with --posthoc_ema")
    snapshots = [read_snapshot(os.path.join(folder, name)) for name in names]
    step = step or snapshots[-1].step
    used = [s for s in snapshots if s.step <= step]
    if step > snapshots[-1].step or not used:
        raise UserError(f"--step {step}: the snapshots cover steps {snapshots[0].step} to {snapshots[-1].step}")
    if used[-1].step != step:  # EDM2 rebuilds at a snapshot's step only: between two, the fit is poor
        after = next(s.step for s in snapshots if s.step > step)
        raise UserError(f"--step {step}: no snapshot was stored at that step; the nearest are steps "
                        f"{used[-1].step} and {after} (pass one of them)")
    return used, step


def _profiles(snapshots: list[Snapshot]):
    """Each snapshot file's profiles in turn, as {"p0": ..., ...}: one file read at a time."""
    from safetensors.torch import load_file

    for snapshot in snapshots:
        tensors = load_file(snapshot.path)
        for sigma in snapshot.sigma_rels:
            prefix = f"{sigma:.4f}/"
            yield {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}


def reconstruct(snapshots: list[Snapshot], step: int, sigma_rels: list[float]) -> list[dict[str, torch.Tensor]]:
    """The weights of the EMA of each sigma_rel at ``step``."""
    steps = [s.step for s in snapshots for _ in s.sigma_rels]
    gammas = [phema.gamma_of(sigma) for s in snapshots for sigma in s.sigma_rels]
    weights = [phema.coefficients(steps, gammas, step, phema.gamma_of(sigma)) for sigma in sigma_rels]
    return phema.combine(_profiles(snapshots), weights)


def network_parameters(pipeline, objective_cls) -> list[torch.nn.Parameter]:
    """The pipeline's parameters in the order of the objective's trained parameters (the snapshots' p0, ...)."""
    return [p for name in objective_cls.exported_networks for p in getattr(pipeline, name).parameters()]


@torch.no_grad()
def set_weights(pipeline, objective_cls, weights: dict[str, torch.Tensor]) -> None:
    parameters = network_parameters(pipeline, objective_cls)
    shapes = [tuple(weights[f"p{i}"].shape) if f"p{i}" in weights else None for i in range(len(parameters))]
    if len(weights) != len(parameters) or shapes != [tuple(p.shape) for p in parameters]:
        raise UserError(f"the snapshots hold {len(weights)} tensors that do not fit the run's pipeline "
                        f"({len(parameters)} parameters): were they written by another run?")
    for i, parameter in enumerate(parameters):
        parameter.copy_(weights[f"p{i}"])


def weights_of(pipeline, objective_cls) -> dict[str, torch.Tensor]:
    return {f"p{i}": p.detach().cpu().clone() for i, p in enumerate(network_parameters(pipeline, objective_cls))}


def evaluation_arguments(pipeline_folder: str, training: dict, objective_cls, args, num_samples: int):
    """evaluate_fid.py's arguments that score as the run scored itself while training."""
    from smallgen.evaluation import EvaluationArguments
    from smallgen.training_scores import reference_arguments

    run = SimpleNamespace(**{**training, "evaluate_num_samples": num_samples})
    return EvaluationArguments(
        **vars(reference_arguments(run, run)), pipeline=pipeline_folder, num_samples=num_samples,
        seed=training["seed"], batch_size=args.batch_size or training["eval_batch_size"],
        inception_weights=args.inception_weights or training["inception_weights"], cache_dir=args.cache_dir,
        device=args.device, **objective_cls.evaluation_flags(training))


def score(pipeline, folder: str, evaluation) -> dict[str, float]:
    """The scores of the pipeline's current weights (saved to ``folder``, then scored by evaluate_fid.py)."""
    from smallgen.evaluation import evaluate

    pipeline.save_pretrained(folder, safe_serialization=True)
    (result,) = evaluate(evaluation)
    return {key: result[key] for key in SCORES}


class Run(NamedTuple):
    training: dict  # training_args.json
    objective_cls: type
    pipeline: object  # the exported pipeline, loaded
    trained: dict[str, torch.Tensor]  # the export's weights as trained (before any reconstruction replaced them)


def open_run(folder: str) -> Run:
    from safetensors.torch import load_file

    from smallgen.objectives import objective_class
    from smallgen.sample_sources import load_pipeline

    path = os.path.join(folder, "training_args.json")
    if not os.path.isfile(path):
        raise UserError(f"--run {folder!r} is not a training run folder (no training_args.json)")
    training = read_json(path)
    objective_cls = objective_class(training["model_type"], training.get("class_conditional", False))
    if not training.get("posthoc_ema"):
        raise UserError(f"--run {folder!r} was trained without --posthoc_ema: it stored no snapshots")
    pipeline = load_pipeline(folder)
    kept = os.path.join(folder, phema.SNAPSHOT_FOLDER, TRAINED_EXPORT)
    trained = load_file(kept) if os.path.exists(kept) else weights_of(pipeline, objective_cls)
    return Run(training, objective_cls, pipeline, trained)


def score_all(run: Run, reconstructed: list[dict], args, num_samples: int) -> tuple[list[dict], dict]:
    """The scores of each reconstruction and of the export as trained."""
    from tqdm.auto import tqdm

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        evaluation = evaluation_arguments(folder, run.training, run.objective_cls, args, num_samples)
        for sigma, weights in tqdm(list(zip(args.sigma_rel, reconstructed)), desc="post-hoc EMAs", unit="EMA"):
            set_weights(run.pipeline, run.objective_cls, weights)
            rows.append({"sigma_rel": sigma, **score(run.pipeline, folder, evaluation)})
        set_weights(run.pipeline, run.objective_cls, run.trained)
        trained = score(run.pipeline, folder, evaluation)
    return rows, trained


def export_best(folder: str, run: Run, weights: dict[str, torch.Tensor], summary: dict) -> None:
    """The best EMA's weights written over the run's pipeline (the trained export kept first, once);
    results.json and the model card say which."""
    from safetensors.torch import save_file

    kept = os.path.join(folder, phema.SNAPSHOT_FOLDER, TRAINED_EXPORT)
    if not os.path.exists(kept):
        save_file(run.trained, kept + ".tmp")
        os.replace(kept + ".tmp", kept)
    set_weights(run.pipeline, run.objective_cls, weights)
    for name in run.objective_cls.exported_networks:
        getattr(run.pipeline, name).save_pretrained(os.path.join(folder, name), safe_serialization=True)
    results_path = os.path.join(folder, "results.json")
    results = read_json(results_path) if os.path.exists(results_path) else {}
    results.update({f"posthoc_ema_{k}": summary["chosen"][k] for k in ("sigma_rel", *SCORES)},
                   posthoc_ema_step=summary["step"])
    save_json(results_path, results)
    write_card_section(folder, summary)


def write_card_section(folder: str, summary: dict) -> None:
    """The model card's "Post-hoc EMA" section (replaced if there is one): the choice, the plot, the table."""
    path = os.path.join(folder, "README.md")
    if not os.path.exists(path):
        return
    with open(path) as f:
        text = re.sub(r"\n## Post-hoc EMA\n.*?(?=\n## |\Z)", "", f.read(), flags=re.S)
    chosen, trained, key = summary["chosen"], summary["trained"], SELECT[summary["select"]]
    rows = "\n".join(f"| {r['sigma_rel']:g} | {r['fid']:.2f} | {r['kid_mean']:.4f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} |" for r in summary["rows"])
    section = f"""
## Post-hoc EMA

The weights are the EMA of sigma_rel {chosen['sigma_rel']:g} at step {summary['step']}, rebuilt from the run's
snapshots (Karras et al. 2024) and chosen by {summary['select'].upper()} over {summary['num_samples']} samples:
{chosen[key]:.4g} against {trained[key]:.4g} for the EMA the run trained with.

![{PLOT}]({PLOT})

| sigma_rel | FID | KID | precision | recall |
|---|---|---|---|---|
{rows}
| as trained | {trained['fid']:.2f} | {trained['kid_mean']:.4f} | {trained['precision']:.3f} | {trained['recall']:.3f} |
"""
    with open(path, "w") as f:
        f.write(text.rstrip("\n") + "\n" + section)


def reconstruct_run(args: ReconstructionArguments, say=print) -> dict:
    """Rebuild, score, plot and (unless --no_export) export; returns what reconstruction.json holds."""
    from smallgen.plots import plot_posthoc_scores

    run = open_run(args.run)
    snapshots, step = find_snapshots(args.run, args.step)
    num_samples = args.num_samples or run.training.get("evaluate_num_samples")
    if not num_samples:
        raise UserError("pass --num_samples: the run scored nothing while training (no --evaluate_num_samples)")
    say(f"post-hoc EMA at step {step} from {len(snapshots)} snapshots: sigma_rel "
        f"{', '.join(f'{s:g}' for s in args.sigma_rel)}, each scored on {num_samples} samples")
    reconstructed = reconstruct(snapshots, step, args.sigma_rel)
    rows, trained = score_all(run, reconstructed, args, num_samples)
    best = min(range(len(rows)), key=lambda i: rows[i][SELECT[args.select]])
    summary = {"step": step, "select": args.select, "num_samples": num_samples, "rows": rows, "trained": trained,
               "chosen": rows[best], "exported": args.export, "snapshots": [s.step for s in snapshots]}
    save_json(os.path.join(args.run, phema.SNAPSHOT_FOLDER, RESULTS), summary)
    plot_posthoc_scores(rows, trained, os.path.join(args.run, PLOT), step)
    for row in rows:
        say(f"  sigma_rel {row['sigma_rel']:<6g} FID {row['fid']:8.3f}  KID {row['kid_mean']:.5f}")
    say(f"  as trained     FID {trained['fid']:8.3f}  KID {trained['kid_mean']:.5f}")
    if args.export:
        export_best(args.run, run, reconstructed[best], summary)
        say(f"exported the EMA of sigma_rel {rows[best]['sigma_rel']:g} (the best {args.select.upper()}) "
            f"to {args.run}")
    return summary


def parse_args(argv: list[str] | None = None) -> ReconstructionArguments:
    parser = build_parser([ReconstructionArguments], DESCRIPTION, ["run", "scores", "output"])
    (args,) = parse_into(parser, argv)
    return args


def main(argv: list[str] | None = None) -> dict:
    from smallgen.errors import exit_on_user_error

    with exit_on_user_error():
        return reconstruct_run(parse_args(argv))
