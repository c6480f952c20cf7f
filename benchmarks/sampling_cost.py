"""Sampling cost: FID against network evaluations (NFE) and generation speed, on one machine in one run.

    python benchmarks/sampling_cost.py                    # the CPU table and plot in docs/benchmarks.md
    python benchmarks/sampling_cost.py --table few_step --output_dir runs/few_step   # 1-2 calls, 10 minutes each

Under the CPU time-to-FID protocol (benchmarks/time_to_fid.py: 16 px, 1,000 samples against 1,000
train images; --protocol cpu10k: 10,000 against 10,000). The "nfe" table trains the quick start for 5 minutes (the teacher), tunes it into a
consistency model for 5 more (configs/quickstart-consistency.yaml, --init_from the teacher), trains
the quick start for 10 minutes (the same minutes in all) and the DCGAN for 5. The "few_step" table
gives every generator of one or two calls ten minutes of training in all: MeanFlow from scratch with
the flags' defaults (the paper's ImageNet settings), the consistency model as the 5-minute teacher plus
5 minutes of tuning (and tuned with 2 stages instead of 4; its 2-step middle level swept), the DCGAN,
and MeanFlow as configs/quickstart-meanflow.yaml trains it (the paper's CIFAR-10 settings).

Each row is one evaluate_fid.py setting; img/s is timed afterwards in this process, row after row, on
the same images (so evaluate_fid's own timing, which other work on the machine may slow, is not used).
Rows are appended to ``<output_dir>/sampling_cost.json`` and ``.md``; a rerun skips what is there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import time_to_fid  # noqa: E402  (the protocol, its training runs and their flags)

TEACHER = ("quickstart", 5)  # what every quickstart-consistency* run is tuned from
TABLES = {  # name: (runs trained in this order, rows: (run, its minutes, sampler (None: a one-call
    # generator), steps, evaluate_fid.py flags of the row), scored in this order)
    "nfe": ([TEACHER, ("dcgan", 5), ("quickstart", 10), ("quickstart-consistency", 5)], [
        ("quickstart-consistency", 5, "cm", [1, 2, 4], []),
        ("quickstart", 5, "edm-dpmsolver", [2, 4, 10, 50], []),
        ("dcgan", 5, None, [None], []),
        ("quickstart", 5, "edm-unipc", [2, 4, 10], []),  # at 50 NFE the solvers agree: DPM-Solver and Euler 50
        # were 74.2 and 74.0 after 5 minutes, 55.4 and 55.5 after 15 (time_to_fid.py, 2026-12-02)
        ("quickstart", 10, "edm-dpmsolver", [2, 10], []),
    ]),
    "few_step": ([("quickstart-meanflow", 10), ("dcgan", 10), TEACHER, ("quickstart-consistency", 5),
                  ("quickstart-consistency-2stages", 5), ("quickstart-meanflow-cifar", 10)], [
        ("quickstart-meanflow", 10, "meanflow", [1, 2], []),  # 25% r < t, logit-normal(-0.4, 1), p 1
        ("dcgan", 10, None, [None], []),
        ("quickstart-consistency", 5, "cm", [1, 2], []),  # 2 steps: through level 20 of 40 (sigma 2.24)
        ("quickstart-consistency", 5, "cm", [2], ["--cm_middle_level", "16", "24"]),  # sigma 5.4 and 0.83
        ("quickstart-consistency-2stages", 5, "cm", [1, 2], []),
        ("quickstart-meanflow-cifar", 10, "meanflow", [1, 2], []),  # 75% r < t, logit-normal(-2, 2), p 0.75
    ]),
}


def run_dir(output_dir: Path, recipe: str, minutes: float) -> Path:
    return output_dir / f"{recipe}-{minutes:g}min"


def train_all(protocol, args, output_dir: Path, runs: list) -> None:
    for recipe, minutes in runs:
        folder = run_dir(output_dir, recipe, minutes)
        if (folder / "results.json").exists():
            continue
        extra = ["--init_from", str(run_dir(output_dir, *TEACHER))] if recipe.startswith("quickstart-consistency") else []
        print(f"{recipe}, {minutes:g} min: training ({time.strftime('%H:%M:%S')})", flush=True)
        time_to_fid.train(recipe, minutes, protocol, argparse.Namespace(**{**vars(args), "train_flag": extra}), folder)


def score(protocol, args, folder: Path, sampler: str | None, steps: list, flags: list) -> list[dict]:
    """evaluate_fid.py once for a row's steps and flags (one JSON of several results)."""
    name = "-".join(["fid", sampler or "direct", *(f.lstrip("-") for f in flags)])
    command = [sys.executable, "evaluate_fid.py", "--pipeline", str(folder), "--dataset_name", args.dataset_name,
               "--split", "train", "--resolution", str(protocol.resolution), "--num_samples", str(protocol.num_samples),
               "--num_reference", str(protocol.num_reference), "--seed", str(args.seed),
               "--output_json", str(folder / f"{name}.json"), "--save_samples", str(folder / f"{name}_samples"),
               *(["--scheduler", sampler, "--num_inference_steps", *map(str, steps)] if sampler else []),
               *flags, *protocol.eval_flags]
    time_to_fid._run(command, folder / f"{name}.log")
    return json.loads((folder / f"{name}.json").read_text())["results"]


def images_per_second(folder: Path, sampler: str | None, steps: int | None, count: int, batch_size: int,
                      setting: dict | None = None) -> float:
    """Generation speed of one row (its pipeline keywords: ``setting``): ``count`` images in batches, after
    one untimed batch."""
    import torch

    from smallgen.evaluation import EvaluationArguments
    from smallgen.sample_sources import call_options, load_pipeline, sampling_pipeline
    from smallgen.sampling import draw_images

    settings = EvaluationArguments(pipeline=str(folder), dataset_name="unused", scheduler=sampler or "ddim")
    pipeline = sampling_pipeline(load_pipeline(str(folder)), settings)
    options = call_options(pipeline, settings, steps, setting or {})
    with torch.inference_mode():
        draw_images(pipeline, batch_size, seed=1, batch_size=batch_size, **options)
        start = time.perf_counter()
        draw_images(pipeline, count, seed=0, batch_size=batch_size, **options)
    return count / (time.perf_counter() - start)


SPEED_TRIALS = {  # what was tried to make one-step sampling faster: {name: (batch size, channels_last, compile)}
    "batch 250": (250, False, False), "batch 1000": (1000, False, False),
    "batch 250, channels_last": (250, True, False), "batch 250, torch.compile": (250, False, True),
}


def speed_trials(folder: Path, count: int) -> dict[str, float]:
    """img/s of the consistency model's one step under each of SPEED_TRIALS."""
    import torch

    from smallgen.sample_sources import load_pipeline
    from smallgen.sampling import draw_images

    speeds = {}
    for name, (batch_size, channels_last, compiled) in SPEED_TRIALS.items():
        pipeline = load_pipeline(str(folder))
        pipeline.set_progress_bar_config(disable=True)
        if channels_last:
            pipeline.unet.to(memory_format=torch.channels_last)
        if compiled:
            pipeline.unet = torch.compile(pipeline.unet)
        with torch.inference_mode():
            draw_images(pipeline, batch_size, seed=1, batch_size=batch_size, num_inference_steps=1)  # warm-up, compile
            start = time.perf_counter()
            draw_images(pipeline, max(count, batch_size), seed=0, batch_size=batch_size, num_inference_steps=1)
        speeds[name] = max(count, batch_size) / (time.perf_counter() - start)
        print(f"one step, {name}: {speeds[name]:.1f} img/s", flush=True)
    return speeds


def make_row(recipe, minutes, sampler, flags, scored: dict, trained: dict) -> dict:
    return {"model": f"{recipe}, {minutes:g} min", "train_steps": trained["global_step"],
            "sampler": sampler or "direct", "flags": " ".join(flags), "steps": scored["steps"], "nfe": scored["nfe"],
            "setting": {k: scored[k] for k in ("timesteps",) if k in scored}, "fid": scored["fid"],
            "precision": scored.get("precision"), "recall": scored.get("recall"),
            "num_samples": scored["num_samples"], "images_per_second": None}


def sampler_label(row: dict) -> str:
    """The sampler and the row's pipeline keywords, e.g. "cm, timesteps [16, 0]"."""
    return ", ".join([row["sampler"], *(f"{k} {v}" for k, v in row.get("setting", {}).items())])


def markdown(rows: list[dict]) -> str:
    lines = ["| model | train steps | sampler | NFE | FID | precision | recall | img/s | s per 1,000 images |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        speed = r["images_per_second"]
        timing = "–" if speed is None else f"{speed:,.1f} | {1000 / speed:,.1f}"
        lines.append(f"| {r['model']} | {r['train_steps']} | {sampler_label(r)} | {r['nfe']} | {r['fid']:.1f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | {timing if speed else '– | –'} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """FID against sampling seconds per 1,000 images (log scale), one series per model and sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(7.5, 4.8))
    for model, flags, sampler in dict.fromkeys((r["model"], r.get("flags", ""), r["sampler"]) for r in rows):
        series = [r for r in rows if (r["model"], r.get("flags", ""), r["sampler"]) == (model, flags, sampler)
                  and r["images_per_second"]]
        points = sorted((1000 / r["images_per_second"], r["fid"], point_label(r)) for r in series)
        if not points:
            continue
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-" if not flags else "s",
                label=f"{model}: {sampler}{' ' + flags if flags else ''}")
        for seconds, fid, label in points:
            ax.annotate(label, (seconds, fid), fontsize=7, textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log")
    ax.set_xlabel("sampling seconds per 1,000 images (log; labels: NFE, and a 2-step middle level)")
    ax.set_ylabel("FID (1,000 samples, 16 px)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def point_label(row: dict) -> str:
    """NFE, and the middle level of a 2-step consistency row that sets it."""
    timesteps = row.get("setting", {}).get("timesteps")
    return f"{row['nfe']} (level {timesteps[0]})" if timesteps else str(row["nfe"])


def write(rows: list[dict], info: dict, output_dir: Path) -> None:
    (output_dir / "sampling_cost.json").write_text(json.dumps({**info, "rows": rows}, indent=2))
    (output_dir / "sampling_cost.md").write_text(markdown(rows))
    plot(rows, output_dir / "sampling_cost.png")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset_name", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--protocol", default="cpu", choices=["cpu", "cpu10k"],
                        help="time_to_fid.py's: 1,000 samples against 1,000 train images, or 10,000 against 10,000.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing_images", type=int, default=500, help="Images timed per row for img/s.")
    parser.add_argument("--skip_timing", action="store_true", help="Score only (time later, on an idle machine).")
    parser.add_argument("--speed_trials", action="store_true",
                        help="Also time the consistency model's one step with a larger batch, channels_last, torch.compile.")
    parser.add_argument("--table", default="nfe", choices=sorted(TABLES),
                        help="nfe: FID against NFE (teacher, consistency, DCGAN); few_step: 1-2 calls at 10 minutes each.")
    parser.add_argument("--output_dir", default="runs/sampling_cost")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    protocol = time_to_fid.PROTOCOLS[args.protocol]
    output_dir = Path(args.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    previous = output_dir / "sampling_cost.json"
    before = json.loads(previous.read_text()) if previous.exists() else {"rows": []}
    rows = before.pop("rows")
    info = {**before, "protocol": args.protocol, "command": " ".join(["python benchmarks/sampling_cost.py", *(sys.argv[1:] if argv is None else argv)])}
    runs, table = TABLES[args.table]
    train_all(protocol, args, output_dir, runs)
    for recipe, minutes, sampler, steps, flags in table:
        model = f"{recipe}, {minutes:g} min"
        if any((r["model"], r["sampler"], r.get("flags", "")) == (model, sampler or "direct", " ".join(flags))
               for r in rows):
            continue
        folder = run_dir(output_dir, recipe, minutes)
        print(f"{model}: scoring {sampler or 'direct'} {' '.join(flags)} at {steps} ({time.strftime('%H:%M:%S')})",
              flush=True)
        trained = json.loads((folder / "results.json").read_text())
        rows += [make_row(recipe, minutes, sampler, flags, scored, trained)
                 for scored in score(protocol, args, folder, sampler, steps, flags)]
        write(rows, info, output_dir)
    if not args.skip_timing:
        for row in rows:
            if row["images_per_second"] is None:
                recipe, minutes = row["model"].split(", ")
                folder = run_dir(output_dir, recipe, float(minutes.split()[0]))
                sampler = None if row["sampler"] == "direct" else row["sampler"]
                row["images_per_second"] = images_per_second(folder, sampler, row["steps"], args.timing_images, 250,
                                                             row.get("setting"))
                print(f"{row['model']}, {row['sampler']}, NFE {row['nfe']}: {row['images_per_second']:.1f} img/s",
                      flush=True)
                write(rows, info, output_dir)
    if args.speed_trials:
        info["speed_trials"] = speed_trials(run_dir(output_dir, "quickstart-consistency", 5), args.timing_images)
        write(rows, info, output_dir)
    print(markdown(rows))


if __name__ == "__main__":
    main()
