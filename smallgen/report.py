"""REPORT.md from run folders and evaluate_fid.py results: the comparison table and its pictures.

    python -m smallgen.report --runs runs/cifar10-ddpm-linear-t300 runs/cifar10-dcgan \
        --fid results/*.json --output_dir report

Writes ``report/REPORT.md`` and ``report/figures/*.png``: forward-process strips (linear vs cosine),
reverse-process strips (DDPM vs DDIM from the same noise) per diffusion run, sample progressions
and loss curves per run, FID vs sampling steps and FID vs training time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from smallgen.arguments import build_parser, check_flags, flag, parse_into
from smallgen.errors import ConfigError, UserError


@dataclass
class ReportArguments:
    runs: list[str] = flag([], "Run folders written by train_unconditional.py.", group="inputs", nargs="*")
    fid: list[str] = flag([], "evaluate_fid.py JSON files.", group="inputs", nargs="*")
    output_dir: str = flag("report", "Where REPORT.md and figures/ go.", group="output")
    dataset_name: str | None = flag(None, "Images for the forward-process strip (default: the first run's data).",
                                    group="strips")
    num_forward_images: int = flag(2, "Images in the forward-process strip (0: none).", group="strips", at_least=0)
    reverse_steps_ddpm: int | None = flag(None, "DDPM steps of the reverse strip (default: the run's T).",
                                          group="strips", at_least=1)
    reverse_steps_ddim: int = flag(50, "DDIM steps of the reverse strip.", group="strips", at_least=1)
    skip_reverse: bool = flag(False, "No reverse-process strips (they run the model).", group="strips")
    title: str = flag("Small-image generative models: comparison", "Report title.", group="output")

    def __post_init__(self):
        check_flags(self)
        if not self.runs and not self.fid:
            raise ConfigError("give run folders (--runs) and/or FID results (--fid)")


@dataclass
class RunInfo:
    path: str
    name: str
    arguments: dict
    results: dict

    @property
    def model_type(self) -> str:
        return self.arguments.get("model_type", "ddpm")

    @property
    def conditional(self) -> bool:
        return bool(self.arguments.get("class_conditional"))

    @property
    def schedule(self) -> str | None:
        if self.model_type != "ddpm":
            return None
        return f"{self.arguments.get('ddpm_beta_schedule', '?')} T={self.arguments.get('ddpm_num_steps', '?')}"


def read_run(path: str) -> RunInfo:
    args_path = os.path.join(path, "training_args.json")
    if not os.path.isfile(args_path):
        raise UserError(f"{path!r} is not a run folder (no training_args.json)")
    with open(args_path) as f:
        arguments = json.load(f)
    results = {}
    if os.path.isfile(os.path.join(path, "results.json")):
        with open(os.path.join(path, "results.json")) as f:
            results = json.load(f)
    return RunInfo(path, os.path.basename(os.path.normpath(path)), arguments, results)


def match_run(result: dict, runs: list[RunInfo]) -> RunInfo | None:
    """The run whose folder is the evaluated pipeline (same path, else same folder name)."""
    model = str(result.get("model", ""))
    for run in runs:
        if os.path.abspath(model) == os.path.abspath(run.path):
            return run
    for run in runs:
        if os.path.basename(os.path.normpath(model)) == run.name:
            return run
    return None


def _hours(seconds) -> str:
    if seconds is None:
        return "–"
    minutes = round(seconds / 60)
    return f"{minutes // 60}h {minutes % 60:02d}m"


def comparison_rows(results: list[dict], runs: list[RunInfo]) -> list[dict]:
    rows = []
    for r in results:
        run = match_run(r, runs)
        rows.append({
            "model": run.name if run else os.path.basename(os.path.normpath(str(r.get("model", "?")))),
            "type": run.model_type if run else (r.get("pipeline_class") or "?"),
            "schedule": (run.schedule if run else None) or "–",
            "sampler": r.get("sampler") or "–",
            "steps": r.get("steps") if r.get("steps") is not None else "–",
            "FID": f"{r['fid']:.2f}",
            "KID ×10³": f"{r['kid_mean'] * 1e3:.2f} ± {r.get('kid_std', 0) * 1e3:.2f}",
            "samples": f"{r.get('num_samples')} vs {r.get('num_reference')}",
            "training time": _hours(run.results.get("training_seconds") if run else None),
            "generation img/s": f"{r['images_per_second']:.1f}" if r.get("images_per_second") else "–",
            "device": r.get("device", "–"),
        })
    return rows


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "(no FID results given)"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def _reference_images(args: ReportArguments, runs: list[RunInfo], count: int):
    from smallgen.config import DataArguments
    from smallgen.data import decode_to_uint8, load_split

    source = {"dataset_name": args.dataset_name}
    if args.dataset_name is None:
        for run in runs:
            if run.arguments.get("dataset_name") or run.arguments.get("train_data_dir"):
                source = {k: run.arguments.get(k) for k in ("dataset_name", "train_data_dir", "dataset_config_name")}
                break
        else:
            return None, None
    first_run_resolution = runs[0].arguments.get("resolution", 32) if runs else 32
    data_args = DataArguments(**{k: v for k, v in source.items() if v is not None}, resolution=first_run_resolution)
    dataset, column, _ = load_split(data_args, "train")
    return decode_to_uint8(dataset.select(range(min(count, len(dataset)))), column, data_args,
                           show_progress=False), data_args.resolution


def write_report(args: ReportArguments) -> str:
    from smallgen.evaluation import read_results
    from smallgen.metrics import read_metrics
    from smallgen.plots import plot_forward_process, plot_loss_curves, plot_progression, plot_reverse_process

    runs = [read_run(path) for path in args.runs]
    results = read_results(args.fid) if args.fid else []
    figures = os.path.join(args.output_dir, "figures")
    os.makedirs(figures, exist_ok=True)
    sections: list[str] = [f"# {args.title}", ""]

    rows = comparison_rows(results, runs)
    sections += ["## Comparison", "", markdown(rows), ""]
    if results:
        sections += ["FID/KID by torch-fidelity (Inception-v3, 2048-d pool features); KID in units of 10⁻³. "
                     "Generation speed includes the whole sampling loop on the device shown.", ""]

    def figure(title: str, name: str, caption: str = "") -> None:
        sections.extend([f"### {title}", "", f"![{title}](figures/{name})", ""] + ([caption, ""] if caption else []))

    if results:
        _fid_section(results, runs, figures, sections, figure)

    diffusion_runs = [run for run in runs if run.model_type == "ddpm" and not run.conditional]
    if runs:
        sections += ["## The diffusion process", ""]
        images, _ = _reference_images(args, runs, args.num_forward_images)
        if images is not None and len(images):
            from models.schedulers import NoiseSchedule

            first = diffusion_runs[0].arguments if diffusion_runs else {}
            T = first.get("ddpm_num_steps", 1000)
            schedules = {"linear": NoiseSchedule(T, first.get("beta_start", 1e-4), first.get("beta_end", 0.02), "linear"),
                         "cosine": NoiseSchedule(T, beta_schedule="cosine")}
            plot_forward_process(images, schedules, os.path.join(figures, "forward_process.png"))
            figure("Forward process: linear vs cosine", "forward_process.png",
                   "The cosine schedule destroys information more slowly: mid-way images are still recognisable.")
        if not args.skip_reverse:
            for run in diffusion_runs:
                name = f"reverse_{run.name}.png"
                plot_reverse_process(_reverse_strips(run, args), os.path.join(figures, name))
                figure(f"Reverse process: {run.name}", name,
                       "Rows: x_t and the network's prediction of x_0, for DDPM and DDIM from the same x_T.")

    for run in (run for run in runs if run.conditional):
        _conditional_section(run, figures, sections, figure)
    if runs:
        sections += ["## Training", ""]
    for run in runs:
        metrics = read_metrics(os.path.join(run.path, "metrics.jsonl"))
        plot_loss_curves(metrics, os.path.join(figures, f"loss_{run.name}.png"), title=f"{run.name}: losses")
        figure(f"Losses: {run.name}", f"loss_{run.name}.png")
        if plot_progression(run.path, os.path.join(figures, f"progression_{run.name}.png")):
            figure(f"Samples over training: {run.name}", f"progression_{run.name}.png")

    path = os.path.join(args.output_dir, "REPORT.md")
    with open(path, "w") as f:
        f.write("\n".join(sections))
    return path


def _fid_section(results: list[dict], runs: list[RunInfo], figures: str, sections: list, figure) -> None:
    from smallgen.plots import plot_fid_vs_guidance, plot_fid_vs_steps, plot_fid_vs_training_time

    sections += ["## FID", ""]
    if any(r.get("steps") is not None for r in results):
        plot_fid_vs_steps(results, os.path.join(figures, "fid_vs_steps.png"))
        figure("FID vs sampling steps", "fid_vs_steps.png")
    if any(r.get("guidance_scale") is not None for r in results):
        plot_fid_vs_guidance(results, os.path.join(figures, "fid_vs_guidance.png"))
        figure("FID vs guidance scale", "fid_vs_guidance.png")
    best: dict[str, tuple[float, float]] = {}
    for r in results:
        run = match_run(r, runs)
        seconds = run.results.get("training_seconds") if run else None
        if seconds is not None and (run.name not in best or r["fid"] < best[run.name][1]):
            best[run.name] = (seconds / 3600, r["fid"])
    if best:
        plot_fid_vs_training_time(best, os.path.join(figures, "fid_vs_training_time.png"))
        figure("FID vs training time", "fid_vs_training_time.png")


GUIDANCE_SCALES = (0.0, 1.0, 2.0, 4.0, 8.0)


def _conditional_section(run: RunInfo, figures: str, sections: list, figure, per_class: int = 6) -> None:
    """A class x samples grid and the same noise under guidance 0, 1, 2, 4, 8."""
    import torch

    from pipelines import ClassConditionalPipeline
    from smallgen.plots import plot_guidance_strip, save_image_grid
    from smallgen.seeding import image_generators

    pipe = ClassConditionalPipeline.from_pretrained(run.path)
    pipe.set_progress_bar_config(disable=True)
    names, steps = pipe.class_names, min(50, pipe.scheduler.config.num_train_timesteps)

    def draw(labels, scale):
        images = pipe(class_labels=labels, guidance_scale=scale, num_inference_steps=steps,
                      generator=image_generators(0, range(len(labels)), "cpu"), output_type="pt").images
        return (images * 255).round().to(torch.uint8)

    sections += [f"## Class-conditional generation: {run.name}", ""]
    grid = draw([c for c in range(len(names)) for _ in range(per_class)], run.arguments.get("guidance_scale", 2.0))
    save_image_grid(grid, os.path.join(figures, f"classes_{run.name}.png"), nrow=per_class)
    figure(f"Samples per class: {run.name}", f"classes_{run.name}.png", "Rows: " + ", ".join(names) + ".")
    strip = {scale: draw(list(range(len(names))), scale) for scale in GUIDANCE_SCALES}
    plot_guidance_strip(strip, names, os.path.join(figures, f"guidance_{run.name}.png"))
    figure(f"Guidance: {run.name}", f"guidance_{run.name}.png",
           "Each column starts from the same noise; w = 0 ignores the class, w = 1 is the plain conditional model.")


def _reverse_strips(run: RunInfo, args: ReportArguments) -> dict:
    from diffusers import DDIMScheduler, DDPMPipeline

    from smallgen.plots import reverse_process_frames

    try:
        pipeline = DDPMPipeline.from_pretrained(run.path)
    except Exception as exc:
        raise UserError(f"could not load the pipeline in {run.path!r} for the reverse-process strip: {exc}") from None
    T = pipeline.scheduler.config.num_train_timesteps
    ddpm_steps = min(args.reverse_steps_ddpm or T, T)
    ddim = DDIMScheduler.from_config(pipeline.scheduler.config)
    return {f"DDPM {ddpm_steps} steps": reverse_process_frames(pipeline.unet, pipeline.scheduler, ddpm_steps),
            f"DDIM {args.reverse_steps_ddim} steps": reverse_process_frames(pipeline.unet, ddim, args.reverse_steps_ddim,
                                                                      eta=0.0)}


def main(argv: list[str] | None = None) -> str:
    from smallgen.errors import exit_on_user_error

    with exit_on_user_error():
        parser = build_parser([ReportArguments], __doc__.splitlines()[0], ["inputs", "strips", "output"])
        (args,) = parse_into(parser, argv)
        path = write_report(args)
        print(f"report written to {path}")
        return path


if __name__ == "__main__":
    main()
