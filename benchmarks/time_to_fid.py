"""Time to FID: every named recipe trained for the same minutes on this machine, then scored under one protocol.

    python benchmarks/time_to_fid.py --protocol cpu                      # the CPU table in docs/benchmarks.md
    python benchmarks/time_to_fid.py --protocol gpu --dataset_name /path/to/cifar10
    python benchmarks/time_to_fid.py --protocol cpu --recipes quickstart diffusers-example --budgets 5
    python benchmarks/time_to_fid.py --protocol cpu10k                   # 10,000 samples: the quick start vs DCGAN
    python benchmarks/time_to_fid.py --protocol cpu32                    # the seeds' seven families at 32 px

Each (recipe, budget) is one ``accelerate launch train_unconditional.py --config <recipe>
--max_train_minutes <budget>`` with the protocol's data and resolution, then one ``evaluate_fid.py``
on what it exported. Rows are appended to ``<output_dir>/time_to_fid.json`` and ``.md`` as they
finish; a rerun skips the rows already there (so a long protocol can run in several calls).
Recipes differ only by their config file; the protocol overrides the same flags for all of them.
The "data" row scores real training images the way a recipe's samples are scored: the floor no
model can go below under the protocol (its sample count and reference).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPES = {  # name: (config file, extra training flags[, samplers]); "diffusers-example" is diffusers'
    # example's hyper-parameters. Diffusion rows are scored with each of their samplers (default: the
    # protocol's) at the protocol's NFE; EDM models take diffusers' EDM schedulers, the first the default.
    "quickstart": ("configs/quickstart.yaml", [], ["edm-dpmsolver", "edm-euler"]),
    "quickstart-ddpm": ("configs/quickstart-ddpm.yaml", []),
    "quickstart-flow": ("configs/quickstart-flow.yaml", [], ["flow-heun", "flow-euler"]),
    "quickstart-consistency": ("configs/quickstart-consistency.yaml", [], ["cm"]),  # needs --init_from (sampling_cost.py)
    "quickstart-consistency-2stages": ("configs/quickstart-consistency.yaml", ["--ct_stages", "2"], ["cm"]),  # the same
    "quickstart-meanflow": ("configs/quickstart-meanflow.yaml", [  # the flags' defaults: the paper's ImageNet ones
        "--meanflow_ratio", "0.25", "--meanflow_logit_mean", "-0.4", "--meanflow_logit_std", "1.0",
        "--meanflow_weighting_power", "1.0"], ["meanflow"]),
    "quickstart-meanflow-cifar": ("configs/quickstart-meanflow.yaml", [], ["meanflow"]),  # the recipe: the paper's
    # CIFAR-10 settings (75% of pairs r < t, logit-normal(-2, 2), p 0.75); the better one, 2026-12-05
    "diffusers-example": ("configs/diffusers-example.yaml", []),
    "vae": ("configs/cifar10-vae.yaml", []),
    "dcgan": ("configs/cifar10-dcgan.yaml", []),
    "dcgan-ema": ("configs/cifar10-dcgan.yaml", ["--use_ema", "--ema_max_decay", "0.999"]),
    "vaegan": ("configs/cifar10-vaegan.yaml", []),
    # the seed's DDPM rows (seed 002: T = 300, linear betas 1e-4..0.02 or the cosine schedule) on a CPU (#43)
    "cpu32-ddpm-cosine": ("configs/cpu32-ddpm-cosine.yaml", []),
    "cpu32-ddpm-linear": ("configs/cpu32-ddpm-linear.yaml", []),
    "ddpm-cosine-t300": ("configs/cifar10-ddpm-cosine-t300.yaml", []),  # the same on a GPU: the seed's batch and lr
    "ddpm-linear-t300": ("configs/cifar10-ddpm-linear-t300.yaml", []),
}
FEW_STEP_CALLS = {"meanflow": [1, 2], "cm": [1, 2]}  # a one- or two-call sampler is scored at each count
GAN_BATCHNORM_MODES = ("eval", "train")  # a GAN pipeline is scored both ways (BatchNorm running vs batch statistics)


DATA_FLOOR = "data"  # the row of real training images (not a recipe: nothing is trained)
ALL = ["quickstart", "quickstart-flow", "quickstart-ddpm", "diffusers-example", "vae", "dcgan", "dcgan-ema", "vaegan"]
SEEDS_32PX = ["cpu32-ddpm-cosine", "cpu32-ddpm-linear", "quickstart", "quickstart-meanflow-cifar", "dcgan", "vaegan",
              "vae"]  # seed 002's families and ours at 32 px, equal minutes
SEEDS_32PX_GPU = ["ddpm-cosine-t300", "ddpm-linear-t300", *SEEDS_32PX[2:]]


@dataclass
class Protocol:
    plan: dict[float, list[str]]  # minutes of training: the recipes trained that long
    resolution: int
    num_samples: int
    num_reference: int | None  # None: the whole train split
    sampler: str = "ddim"
    sampler_steps: int = 50
    train_flags: list[str] = field(default_factory=list)  # the same for every recipe
    diffusion_flags: list[str] = field(default_factory=list)  # the same for every diffusion recipe
    eval_flags: list[str] = field(default_factory=list)
    default_scoring_only: bool = False  # one scoring a run: a diffusion model's first sampler, a GAN in BN eval


PROTOCOLS = {
    # 2 CPU cores: 16 px training and references, 1,000 samples vs a fixed 1,000-image train subset.
    "cpu": Protocol(plan={5: ALL, 15: ["quickstart", "quickstart-ddpm", "diffusers-example"]}, resolution=16, num_samples=1000,
                    num_reference=1000, eval_flags=["--batch_size", "250"]),
    # the same at 10,000 samples vs a fixed 10,000-image train subset (#42): a lower floor and less noise,
    # ~11 minutes of Inception a scoring on 2 cores, so each run is scored once, at 10 calls.
    "cpu10k": Protocol(plan={5: ["quickstart", "dcgan"], 15: ["quickstart", "dcgan"]}, resolution=16,
                       num_samples=10000, num_reference=10000, sampler_steps=10, eval_flags=["--batch_size", "250"],
                       default_scoring_only=True),
    # the seeds' comparison at 32 px (#43): every family 10 minutes, 5,000 samples vs 10,000 train images;
    # diffusion rows at 10 calls (DPM-Solver++ for DDPM, EDM's for EDM), MeanFlow at 1 and 2.
    "cpu32": Protocol(plan={10: SEEDS_32PX}, resolution=32, num_samples=5000, num_reference=10000,
                      sampler="dpmsolver++", sampler_steps=10, eval_flags=["--batch_size", "250"],
                      default_scoring_only=True),
    # one H100: 32 px, 10,000 samples vs the 50,000 train images; the speed flags for every recipe.
    "gpu": Protocol(plan={6: ALL}, resolution=32, num_samples=10000, num_reference=None,
                    train_flags=["--mixed_precision", "bf16", "--allow_tf32", "--channels_last"],
                    diffusion_flags=["--model_config_name_or_path", "configs/models/unet-ddpm-cifar10.json"],
                    eval_flags=["--batch_size", "1000", "--mixed_precision", "bf16"]),
    # the seeds' table on a GPU (benchmarks/gpu_suite.py pack --table seeds32; ~3 families a window): a minute each, the
    # seed's DDPM recipes (batch 128, lr 1e-4), one UNet and batch for every diffusion row; not run yet.
    "gpu32": Protocol(plan={1: SEEDS_32PX_GPU}, resolution=32, num_samples=10000, num_reference=None,
                      sampler="dpmsolver++", sampler_steps=10,
                      train_flags=["--mixed_precision", "bf16", "--allow_tf32", "--channels_last"],
                      diffusion_flags=["--model_config_name_or_path", "configs/models/unet-small-cifar10.json",
                                       "--train_batch_size", "128"],
                      eval_flags=["--batch_size", "1000", "--mixed_precision", "bf16"], default_scoring_only=True),
}


def train(recipe: str, minutes: float, protocol: Protocol, args, run_dir: Path) -> dict:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
               "train_unconditional.py", "--config", RECIPES[recipe][0], "--dataset_name", args.dataset_name,
               "--train_data_dir", "none", "--resolution", str(protocol.resolution), "--max_train_minutes",
               str(minutes), "--output_dir", str(run_dir), "--overwrite_output_dir",
               "--save_images_epochs", "1000000", "--seed", str(args.seed), *protocol.train_flags,
               *(protocol.diffusion_flags if is_diffusion(recipe) else []), *RECIPES[recipe][1], *args.train_flag]
    _run(command, run_dir / "train.log")
    return json.loads((run_dir / "results.json").read_text())


def data_floor_indices(size: int, num_reference: int | None, count: int, seed: int):
    """(``count`` sorted train indices for the data row, whether they are apart from the reference): ones the
    reference subset lacks where enough are left, else any."""
    import numpy as np

    from smallgen.evaluation import EvaluationArguments
    from smallgen.reference import reference_indices

    reference = reference_indices(size, num_reference, EvaluationArguments.reference_seed)
    others = np.setdiff1d(np.arange(size), reference)
    apart = len(others) >= count
    pool = others if apart else np.arange(size)
    return np.sort(np.random.RandomState(seed).choice(pool, count, replace=False)), apart


def score_data_floor(protocol: Protocol, args, output_dir: Path) -> dict:
    """FID of ``num_samples`` training images against the protocol's reference: images the reference
    does not hold when it is a subset (CPU), a random share of it when it is the whole split (GPU)."""
    from smallgen.data import DataArguments, decode_to_uint8, load_split
    from smallgen.sample_sources import save_pngs

    count = args.num_samples or protocol.num_samples
    data_args = DataArguments(dataset_name=args.dataset_name, resolution=protocol.resolution)
    dataset, column, _ = load_split(data_args, "train")
    chosen, apart = data_floor_indices(len(dataset), protocol.num_reference, count, args.seed)
    run_dir = output_dir / f"{DATA_FLOOR}-0min"
    save_pngs(decode_to_uint8(dataset.select(chosen), column, data_args, desc="decoding the data row"),
              str(run_dir / "fid_samples"))
    command = [sys.executable, "evaluate_fid.py", "--samples_dir", str(run_dir / "fid_samples"),
               "--dataset_name", args.dataset_name, "--split", "train", "--resolution", str(protocol.resolution),
               "--num_samples", str(count), "--output_json", str(run_dir / "fid.json"),
               *(["--num_reference", str(protocol.num_reference)] if protocol.num_reference else []),
               *protocol.eval_flags]
    _run(command, run_dir / "fid.log")
    scored = json.loads((run_dir / "fid.json").read_text())["results"][0]
    label = "train images" + ("" if apart else ", from the reference")
    trained = {"global_step": 0, "images_seen": 0, "images_per_second": None, "clock_seconds": 0}
    return make_row(DATA_FLOOR, 0, trained, scored, Scoring(), "fid") | {"sampler": label}


def is_diffusion(recipe: str) -> bool:
    from smallgen.config import load_config_file
    from smallgen.objectives import objective_class

    return bool(objective_class(load_config_file(str(ROOT / RECIPES[recipe][0])).get("model_type", "ddpm")).samplers)


@dataclass(frozen=True)
class Scoring:
    """One way to score a trained run: a sampler for a diffusion model, a BatchNorm mode for a GAN."""

    sampler: str | None = None
    batchnorm: str | None = None
    steps: int | None = None  # a few-step sampler's calls (else the protocol's sampler steps)

    @property
    def label(self) -> str:  # the table's "sampler" column
        if self.sampler:
            return self.sampler + (f", {self.steps} call{'s' * (self.steps > 1)}" if self.steps else "")
        return "direct" if self.batchnorm is None else f"direct, BN {self.batchnorm}"

    def name(self, first: bool) -> str:  # the run folder's files: fid.json for the default scoring
        if first:
            return "fid"
        if self.batchnorm:
            return f"fid-batchnorm-{self.batchnorm}"
        return f"fid-{self.sampler}" + (f"-{self.steps}" if self.steps else "")


def evaluate(protocol: Protocol, args, run_dir: Path, scoring: Scoring, name: str) -> dict:
    command = [sys.executable, "evaluate_fid.py", "--pipeline", str(run_dir), "--dataset_name", args.dataset_name,
               "--split", "train", "--resolution", str(protocol.resolution), "--num_samples",
               str(args.num_samples or protocol.num_samples), "--num_inference_steps",
               str(scoring.steps or args.sampler_steps or protocol.sampler_steps),
               "--seed", str(args.seed), "--save_samples", str(run_dir / f"{name}_samples"),
               "--output_json", str(run_dir / f"{name}.json"),
               *(["--num_reference", str(protocol.num_reference)] if protocol.num_reference else []),
               *(["--scheduler", scoring.sampler] if scoring.sampler else []),
               *(["--gan_batchnorm", scoring.batchnorm] if scoring.batchnorm else []), *protocol.eval_flags]
    _run(command, run_dir / f"{name}.log")
    return json.loads((run_dir / f"{name}.json").read_text())["results"][0]


def scorings(recipe: str, protocol: Protocol, run_dir: Path) -> list[Scoring]:
    """A GAN in both BatchNorm modes; a diffusion model with each of its samplers, a few-step one at each of its
    call counts; anything else once. Only the first mode or sampler where the protocol says so (the export's own
    BatchNorm mode, the recipe's first sampler)."""
    pipeline_class = json.loads((run_dir / "model_index.json").read_text())["_class_name"]
    if "GANPipeline" in str(pipeline_class):
        chosen = [Scoring(batchnorm=mode) for mode in GAN_BATCHNORM_MODES]
    elif not is_diffusion(recipe):
        chosen = [Scoring()]
    else:
        samplers = RECIPES[recipe][2] if len(RECIPES[recipe]) > 2 else [protocol.sampler]
        chosen = [Scoring(sampler=sampler) for sampler in samplers]
    chosen = chosen[:1] if protocol.default_scoring_only else chosen
    return [Scoring(s.sampler, s.batchnorm, calls) for s in chosen for calls in FEW_STEP_CALLS.get(s.sampler, [None])]


def _run(command: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    print("  $", " ".join(command), flush=True)
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text()[-3000:]
        sys.exit(f"failed (exit {done.returncode}); the end of {log}:\n{tail}")


def make_row(recipe: str, minutes: float, trained: dict, scored: dict, scoring: Scoring, name: str) -> dict:
    return {"recipe": recipe, "budget_minutes": minutes, "steps": trained["global_step"],
            "images_seen": trained["images_seen"], "images_per_second": trained["images_per_second"],
            "train_minutes": trained["clock_seconds"] / 60, "sampler": scoring.label, "scoring": name,
            "sampling_images_per_second": scored.get("images_per_second"), "nfe": scored["nfe"], "fid": scored["fid"], "kid_mean": scored["kid_mean"],
            "kid_std": scored["kid_std"], "precision": scored.get("precision"), "recall": scored.get("recall"),
            "num_samples": scored["num_samples"], "reference": scored["reference"]}


def markdown(rows: list[dict]) -> str:
    lines = ["| recipe | budget | steps | images seen | img/s | sampler | NFE | FID | KID (x1e3) | precision | recall "
             "| sampling img/s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def number(value, digits):  # rows scored before precision/recall existed, and the data row's img/s
        return "–" if value is None else f"{value:.{digits}f}"

    for r in rows:
        lines.append(f"| {r['recipe']} | {r['budget_minutes']:g} min ({r['train_minutes']:.2f}) | {r['steps']} | "
                     f"{r['images_seen']:,} | {number(r['images_per_second'], 0)} | {r['sampler']} | {r['nfe']} | "
                     f"{r['fid']:.1f} | {1e3 * r['kid_mean']:.1f} ± {1e3 * r['kid_std']:.1f} | "
                     f"{number(r.get('precision'), 3)} | {number(r.get('recall'), 3)} | "
                     f"{number(r.get('sampling_images_per_second'), 0)} |")
    return "\n".join(lines) + "\n"


def write(rows: list[dict], info: dict, output_dir: Path) -> None:
    (output_dir / "time_to_fid.json").write_text(json.dumps({**info, "rows": rows}, indent=2))
    (output_dir / "time_to_fid.md").write_text(markdown(rows))
    plot_samples(rows, output_dir)


def plot_samples(rows: list[dict], output_dir: Path, count: int = 36) -> None:
    """time_to_fid.png: the first ``count`` scored samples of every row, titled with its FID."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from PIL import Image

    from smallgen.plots import image_grid

    shown = [r for r in rows if "scoring" in r]  # rows scored by an older version have no samples folder here
    if not shown:
        return
    columns = min(len(shown), 4)
    lines = -(-len(shown) // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(3.2 * columns, 3.6 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, shown):
        folder = output_dir / f"{row['recipe']}-{row['budget_minutes']:g}min" / f"{row['scoring']}_samples"
        files = sorted(folder.glob("*.png"))[:count]
        if files:
            images = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
            ax.imshow(image_grid(images.permute(0, 3, 1, 2), scale=2))
        ax.set_title(f"{row['recipe']}, {row['budget_minutes']:g} min\n{row['sampler']}: FID {row['fid']:.1f}", fontsize=9)
    figure.tight_layout()
    figure.savefig(output_dir / "time_to_fid.png", dpi=100)
    plt.close(figure)


def planned_runs(protocol: Protocol, args) -> list[tuple[float, str]]:
    """(minutes, recipe) pairs: the protocol's plan kept to --recipes; with --budgets, each budget for --recipes
    (default: the protocol's recipes). A recipe the plan lacks needs --budgets."""
    named = [recipe for recipe in args.recipes or [] if recipe != DATA_FLOOR]
    if args.budgets:
        recipes = named if args.recipes else list(dict.fromkeys(r for listed in protocol.plan.values() for r in listed))
        return [(minutes, recipe) for minutes in args.budgets for recipe in recipes]
    unplanned = [recipe for recipe in named if not any(recipe in listed for listed in protocol.plan.values())]
    if unplanned:
        sys.exit(f"--recipes {' '.join(unplanned)}: not in the {args.protocol} protocol's plan; give --budgets")
    return [(minutes, recipe) for minutes, recipes in protocol.plan.items() for recipe in recipes
            if not args.recipes or recipe in args.recipes]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu")
    parser.add_argument("--recipes", nargs="+", choices=sorted([*RECIPES, DATA_FLOOR]),
                        help=f"Default: the protocol's, after the {DATA_FLOOR!r} row (real training images).")
    parser.add_argument("--budgets", nargs="+", type=float, help="Minutes, for every recipe; default: the protocol's plan.")
    parser.add_argument("--dataset_name", default=str(ROOT.parent / "shared" / "data" / "cifar10"),
                        help="CIFAR-10 (hub id or local folder) for training and references.")
    parser.add_argument("--num_samples", type=int, help="Override the protocol's (quick checks only).")
    parser.add_argument("--samplers", nargs="+", help="Score diffusion rows only with these of their samplers.")
    parser.add_argument("--sampler_steps", type=int, help="Sampling steps of every diffusion row (default: the protocol's).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train_flag", action="append", default=[],
                        help="An extra flag for every training run (repeat; e.g. --train_flag=--max_train_samples).")
    parser.add_argument("--output_dir", default="runs/time_to_fid")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    protocol = PROTOCOLS[args.protocol]
    output_dir = Path(args.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    previous = output_dir / "time_to_fid.json"
    rows = json.loads(previous.read_text())["rows"] if previous.exists() else []
    info = {"protocol": args.protocol, "dataset_name": args.dataset_name, "command": " ".join(["python benchmarks/time_to_fid.py", *(sys.argv[1:] if argv is None else argv)])}
    if (not args.recipes or DATA_FLOOR in args.recipes) and not any(r["recipe"] == DATA_FLOOR for r in rows):
        print(f"{DATA_FLOOR}: scoring training images ({time.strftime('%H:%M:%S')})", flush=True)
        rows.append({**score_data_floor(protocol, args, output_dir), "command": info["command"]})
        write(rows, info, output_dir)
    for minutes, recipe in planned_runs(protocol, args):
        done = [r["sampler"] for r in rows if r["recipe"] == recipe and r["budget_minutes"] == minutes]
        run_dir = output_dir / f"{recipe}-{minutes:g}min"
        if done and (run_dir / "results.json").exists():  # trained before: score what is missing
            trained = json.loads((run_dir / "results.json").read_text())
        elif done:
            continue
        else:
            print(f"{recipe}, {minutes:g} min: training ({time.strftime('%H:%M:%S')})", flush=True)
            trained = train(recipe, minutes, protocol, args, run_dir)
        chosen = [s for s in scorings(recipe, protocol, run_dir) if not args.samplers or s.sampler in args.samplers
                  or s.sampler is None]
        for index, scoring in enumerate(chosen):
            if scoring.label in done:
                continue
            print(f"{recipe}, {minutes:g} min: scoring {trained['global_step']} steps, {scoring.label}", flush=True)
            name = scoring.name(first=index == 0)
            scored = evaluate(protocol, args, run_dir, scoring, name)
            rows.append({**make_row(recipe, minutes, trained, scored, scoring, name), "command": info["command"]})
            write(rows, info, output_dir)
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    print(markdown(rows))


if __name__ == "__main__":
    main()
