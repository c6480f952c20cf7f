"""Pictures (PNG, readable at a glance): sample grids, loss curves, forward/reverse process strips,
training progressions and FID plots. Plot functions return what they drew, so tests can check
the values come from the inputs."""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2, scale: int = 1) -> Image.Image:
    """uint8 (N, 3, H, W) images as one PIL grid on white, ``scale``-times enlarged with nearest neighbours."""
    from torchvision.utils import make_grid

    nrow = nrow or math.ceil(math.sqrt(len(images)))
    if len(images) == 1:  # make_grid returns a lone image unpadded; keep every grid framed alike
        images = torch.cat([images, torch.full_like(images, 255)])
        grid = make_grid(images, nrow=2, padding=padding, pad_value=255)[:, :, :images.shape[-1] + 2 * padding]
    else:
        grid = make_grid(images, nrow=nrow, padding=padding, pad_value=255)
    picture = Image.fromarray(grid.permute(1, 2, 0).numpy())
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    return picture


def save_image_grid(images: torch.Tensor, path: str, nrow: int | None = None) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    scale = max(1, 128 // images.shape[-1])  # 16 px sprites are unreadable at 1:1
    image_grid(images, nrow, scale=scale).save(path)
    return path


# Loss families drawn on their own axes: their scales differ by orders of magnitude.
LOSS_PANELS = {
    "diffusion / total loss": ("train_loss", "val_loss"),
    "reconstruction (sum of squared errors)": ("recon_loss", "val_recon_loss"),
    "KL divergence (nats)": ("kl_loss", "val_kl_loss"),
    "GAN losses (BCE)": ("d_loss", "g_loss"),
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def loss_series(metrics: list[dict]) -> dict[str, tuple[list, list]]:
    """{metric name: (steps, values)} for every logged ``*loss`` value."""
    series: dict[str, tuple[list, list]] = {}
    for record in metrics:
        for key, value in record.items():
            if key.endswith("loss") and value is not None and "step" in record:
                series.setdefault(key, ([], []))
                series[key][0].append(record["step"])
                series[key][1].append(value)
    return series


def plot_loss_curves(metrics: list[dict], path: str, title: str = "Training and validation loss") -> dict:
    """One panel per loss family (train dashed lines per logging interval, validation dots per epoch)."""
    plt = _pyplot()
    series = loss_series(metrics)
    panels = [(name, [k for k in keys if k in series]) for name, keys in LOSS_PANELS.items()]
    panels = [(name, keys) for name, keys in panels if keys]
    other = sorted(set(series) - {k for _, keys in panels for k in keys})
    if other:
        panels.append(("other losses", other))
    panels = panels or [("loss", [])]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), dpi=100, squeeze=False)
    for ax, (name, keys) in zip(axes[0], panels):
        for key in keys:
            steps, values = series[key]
            ax.plot(steps, values, label=key.replace("_", " "), marker="o" if key.startswith("val") else None,
                    markersize=3)
        if keys and min(min(series[k][1]) for k in keys) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if keys:
            ax.legend()
    fig.suptitle(title)
    _save(fig, path)
    return series


def plot_training_scores(metrics: list[dict], path: str, title: str = "Scores while training") -> list[int]:
    """KID (with its std over subsets), FID, and precision and recall against the optimizer step, from the
    ``evaluation/*`` records of a metrics log. Returns the steps drawn."""
    plt = _pyplot()
    rows = [r for r in metrics if "evaluation/kid" in r]
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), dpi=100)
    axes[0].errorbar(steps, [1e3 * r["evaluation/kid"] for r in rows],
                     yerr=[1e3 * r["evaluation/kid_std"] for r in rows], marker="o", capsize=3)
    axes[0].set_ylabel("KID x 10^3 (unbiased)")
    axes[1].plot(steps, [r["evaluation/fid"] for r in rows], marker="o")
    axes[1].set_ylabel("FID (biased up by few samples)")
    for key in ("precision", "recall"):
        axes[2].plot(steps, [r[f"evaluation/{key}"] for r in rows], marker="o", label=key)
    axes[2].set_ylim(0, 1)
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    _save(fig, path)
    return steps


def plot_posthoc_scores(rows: list[dict], trained: dict, path: str, step: int) -> list[float]:
    """FID and KID of the EMAs reconstructed at ``step`` against their sigma_rel, the export as trained (its
    fixed EMA) as a dashed line. Returns the sigma_rels drawn."""
    plt = _pyplot()
    sigmas = [r["sigma_rel"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for ax, key, scale, label in ((axes[0], "fid", 1, "FID"), (axes[1], "kid_mean", 1e3, "KID x 10^3")):
        ax.plot(sigmas, [scale * r[key] for r in rows], marker="o", label="post-hoc EMA")
        ax.axhline(scale * trained[key], color="gray", linestyle="--", label="the export as trained")
        ax.set_xlabel("sigma_rel (EMA length relative to training)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Post-hoc EMA at step {step}")
    _save(fig, path)
    return sigmas


def _show(ax, image: torch.Tensor) -> None:
    ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_forward_process(images: torch.Tensor, schedules: dict, path: str, num_columns: int = 8,
                         seed: int = 0) -> dict:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps for a few images, one row block per schedule.

    ``images``: uint8 (N, 3, H, W); ``schedules``: {label: NoiseSchedule}. The same noise is used for
    every schedule, so the rows differ only by the schedule. Returns {label: (timesteps, abar_t)}.
    """
    from smallgen.sampling import to_uint8

    plt = _pyplot()
    clean = images.float() / 127.5 - 1
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
    rows = len(images) * len(schedules)
    fig, axes = plt.subplots(rows, num_columns, figsize=(1.2 * num_columns, 1.2 * rows + 0.6), dpi=100,
                             squeeze=False)
    drawn = {}
    for s, (label, schedule) in enumerate(schedules.items()):
        T = schedule.num_train_timesteps
        timesteps = torch.linspace(0, T - 1, num_columns).round().long()
        abar = schedule.alphas_cumprod[timesteps].float()
        drawn[label] = (timesteps.tolist(), abar.tolist())
        for i in range(len(images)):
            row = s * len(images) + i
            for c, t in enumerate(timesteps):
                x_t = schedule.add_noise(clean[i:i + 1], noise[i:i + 1], t.view(1))
                ax = axes[row][c]
                _show(ax, to_uint8(x_t)[0])
                if i == 0:
                    ax.set_title(f"t={int(t)}\nᾱ={abar[c]:.2f}" if s == 0 else f"ᾱ={abar[c]:.2f}", fontsize=7)
            axes[row][0].set_ylabel(label if i == 0 else "", fontsize=8)
    fig.suptitle("Forward process q(x_t | x_0): the same images and noise under each schedule", fontsize=10)
    _save(fig, path)
    return drawn


@torch.no_grad()
def reverse_process_frames(unet, scheduler, num_inference_steps: int, seed: int = 0, num_frames: int = 8,
                    num_images: int = 1, eta: float | None = None) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """[(t, x_t uint8, predicted x_0 uint8)] at ``num_frames`` evenly spaced steps, the last one final.

    Runs the sampling loop written out (``smallgen.sampling.reverse_process``) with image i seeded by
    (seed, i), so the final frame is what the pipeline draws and DDPM and DDIM strips start
    from the same x_T.
    """
    from smallgen import sampling
    from smallgen.seeding import image_generators

    device = next(unet.parameters()).device
    generators = image_generators(seed, range(num_images), device)
    steps = list(sampling.reverse_process(unet, scheduler, num_inference_steps, generators, eta))
    keep = set(np.linspace(0, len(steps) - 1, num_frames).round().astype(int).tolist())
    frames = [(int(t), sampling.to_uint8(x).cpu(), sampling.to_uint8(output.pred_original_sample).cpu())
              for index, (t, x, output) in enumerate(steps) if index in keep]
    final = sampling.to_uint8(steps[-1][2].prev_sample).cpu()
    return frames + [(-1, final, final)]


def plot_reverse_process(strips: dict[str, list], path: str) -> dict:
    """Rows x_t and predicted x_0 for each sampler ({label: reverse_process_frames(...)}), first image only."""
    plt = _pyplot()
    columns = max(len(frames) for frames in strips.values())
    fig, axes = plt.subplots(2 * len(strips), columns, figsize=(1.2 * columns, 2.6 * len(strips) + 0.6), dpi=100,
                             squeeze=False)
    drawn = {}
    for s, (label, frames) in enumerate(strips.items()):
        drawn[label] = [t for t, _, _ in frames]
        for c in range(columns):
            for r in range(2):
                ax = axes[2 * s + r][c]
                if c >= len(frames):
                    ax.axis("off")
                    continue
                t, x_t, x0 = frames[c]
                _show(ax, (x_t if r == 0 else x0)[0])
                if r == 0:
                    ax.set_title("final" if t < 0 else f"t={t}", fontsize=7)
        axes[2 * s][0].set_ylabel(f"{label}\nx_t", fontsize=8)
        axes[2 * s + 1][0].set_ylabel(f"{label}\npredicted x_0", fontsize=8)
    fig.suptitle("Reverse process from the same starting noise", fontsize=10)
    _save(fig, path)
    return drawn


def plot_progression(run_dir: str, path: str, max_columns: int = 6, sampler: str | None = None) -> list[str]:
    """Sample grids saved over training (``samples/epoch_NNNN[_sampler].png``) side by side."""
    import re

    plt = _pyplot()
    folder = os.path.join(run_dir, "samples")
    pattern = re.compile(r"epoch_(\d+)" + (f"_{re.escape(sampler)}" if sampler else "(?:_[a-z]+)?") + r"\.png$")
    found = sorted(((int(m.group(1)), name) for name in (os.listdir(folder) if os.path.isdir(folder) else [])
                    if (m := pattern.match(name))))
    if sampler is None:  # one picture per epoch: prefer ddim grids, else whatever exists
        by_epoch: dict[int, str] = {}
        for epoch, name in found:
            if epoch not in by_epoch or name.endswith("_ddim.png"):
                by_epoch[epoch] = name
        found = sorted(by_epoch.items())
    if not found:
        return []
    picks = sorted({round(i) for i in np.linspace(0, len(found) - 1, min(max_columns, len(found)))})
    chosen = [found[i] for i in picks]
    fig, axes = plt.subplots(1, len(chosen), figsize=(3 * len(chosen), 3.4), dpi=100, squeeze=False)
    for ax, (epoch, name) in zip(axes[0], chosen):
        ax.imshow(Image.open(os.path.join(folder, name)).convert("RGB"), interpolation="nearest")
        ax.set_title(f"epoch {epoch + 1}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"Samples over training: {os.path.basename(os.path.normpath(run_dir))}", fontsize=10)
    _save(fig, path)
    return [name for _, name in chosen]


def _label(result: dict) -> str:
    model = os.path.basename(os.path.normpath(str(result.get("model", "?"))))
    return f"{model} {result['sampler']}" if result.get("sampler") else model


def plot_fid_vs_steps(results: list[dict], path: str) -> dict:
    """FID against sampling steps, one line per (model, sampler, eta); log-scaled steps."""
    plt = _pyplot()
    lines: dict[str, list] = {}
    for r in results:
        if r.get("steps") is None:
            continue
        label = _label(r) + (f" η={r['eta']:g}" if r.get("eta") else "")
        label += f" guidance {r['guidance_scale']:g}" if r.get("guidance_scale") is not None else ""
        lines.setdefault(label, []).append((r["steps"], r["fid"]))
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=100)
    for label, points in sorted(lines.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        lines[label] = points
    ax.set_xscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("FID (lower is better)")
    ax.set_title("FID vs sampling steps")
    ax.grid(alpha=0.3, which="both")
    if lines:
        ax.legend(fontsize=8)
    _save(fig, path)
    return lines


def plot_fid_vs_training_time(points: dict[str, tuple[float, float]], path: str) -> dict:
    """{model: (training hours, best FID)} as labelled points."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=100)
    for label, (hours, fid) in sorted(points.items()):
        ax.scatter([hours], [fid], s=40)
        ax.annotate(label, (hours, fid), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("training time (hours)")
    ax.set_ylabel("best FID (lower is better)")
    ax.set_title("FID vs training time")
    ax.grid(alpha=0.3)
    _save(fig, path)
    return points


def plot_guidance_strip(strip: dict[float, torch.Tensor], class_names: list[str], path: str) -> list[float]:
    """Rows: guidance scales; columns: classes; every row from the same starting noise per column."""
    plt = _pyplot()
    scales = list(strip)
    columns = len(class_names)
    fig, axes = plt.subplots(len(scales), columns, figsize=(1.2 * columns + 0.8, 1.25 * len(scales) + 0.6),
                             dpi=100, squeeze=False)
    for r, scale in enumerate(scales):
        for c in range(columns):
            _show(axes[r][c], strip[scale][c])
            if r == 0:
                axes[r][c].set_title(class_names[c], fontsize=8)
        axes[r][0].set_ylabel(f"w = {scale:g}", fontsize=8)
    fig.suptitle("Classifier-free guidance: the same noise under growing guidance", fontsize=10)
    _save(fig, path)
    return scales


def plot_fid_vs_guidance(results: list[dict], path: str) -> dict:
    """FID against the guidance scale, one line per (model, sampler, steps)."""
    plt = _pyplot()
    lines: dict[str, list] = {}
    for r in results:
        if r.get("guidance_scale") is None:
            continue
        lines.setdefault(f"{_label(r)} {r.get('steps')} steps", []).append((r["guidance_scale"], r["fid"]))
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=100)
    for label, points in sorted(lines.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xlabel("guidance scale w (0: unconditional, 1: conditional)")
    ax.set_ylabel("FID (lower is better)")
    ax.set_title("FID vs classifier-free guidance")
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=8)
    _save(fig, path)
    return lines
