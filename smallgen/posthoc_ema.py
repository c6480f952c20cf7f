"""Post-hoc EMA: the math (Karras et al. 2024, "Analyzing and improving the training dynamics of diffusion
models", section 3 and appendix C; NVlabs/edm2 ``training/phema.py`` does the same, its snapshots pickled).

A power-function EMA at step t averages the weights of steps tau <= t with the density
p(tau) = (g + 1) tau^g / t^(g + 1). Its width relative to t, sigma_rel = sqrt((g + 1) / ((g + 2)^2 (g + 3))),
names it (EDM2 tracks sigma_rel 0.05 and 0.10: g = 16.97 and 6.94).

- Tracked step by step: ema_t = beta_t ema_(t-1) + (1 - beta_t) theta_t with beta_t = (1 - 1/t)^(g + 1). Step 1
  copies the weights; step tau's weight in ema_t is (tau^(g+1) - (tau-1)^(g+1)) / t^(g+1), the density summed
  over (tau - 1, tau].
- Reconstructed afterwards: snapshots of two profiles taken at several steps are combined linearly into the
  profile of any (step, sigma_rel), the combination that is closest to its density in L2. The inner product
  of two densities (t_a, g_a), (t_b, g_b), t_a <= t_b, is (g_a + 1)(g_b + 1) / (g_a + g_b + 1) (t_a/t_b)^g_b / t_b.

Nothing here knows of networks or files: tensors in, tensors out.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from smallgen.errors import ConfigError

SNAPSHOT_FOLDER = "posthoc-ema"  # in the run folder: step-<N>.safetensors, one per snapshot


def gamma_of(sigma_rel: float) -> float:
    """The exponent g of the profile of this relative width: the largest real root of
    g^3 + 7 g^2 + (16 - 1/s^2) g + (12 - 1/s^2) = 0, which is sigma_rel's formula solved for g."""
    if not 0 < sigma_rel < 12 ** -0.5:  # g > 0 needs sigma_rel below the width of g = 0 (uniform): 1/sqrt(12)
        raise ValueError(f"sigma_rel must be in (0, {12 ** -0.5:.4f}); got {sigma_rel}")
    inverse = sigma_rel ** -2
    return float(np.roots([1.0, 7.0, 16.0 - inverse, 12.0 - inverse]).real.max())


def sigma_rel_of(gamma: float) -> float:
    return float(np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))))


def decay(gamma: float, step: int) -> float:
    """beta at ``step`` (counted from 1: step 1 gives 0, a copy of the weights)."""
    return (1.0 - 1.0 / step) ** (gamma + 1)


def inner_product(t_a, g_a, t_b, g_b):
    """<p_a, p_b>: the integral of the product of two profile densities (numpy arrays broadcast)."""
    t_a, g_a, t_b, g_b = (np.asarray(x, dtype=np.float64) for x in (t_a, g_a, t_b, g_b))
    shorter, longer = np.minimum(t_a, t_b), np.maximum(t_a, t_b)
    longer_gamma = np.where(t_a <= t_b, g_b, g_a)  # the density of the longer profile is cut at the shorter's end
    return (g_a + 1) * (g_b + 1) / (g_a + g_b + 1) * (shorter / longer) ** longer_gamma / longer


def coefficients(snapshot_steps, snapshot_gammas, target_step: float, target_gamma: float) -> np.ndarray:
    """Weights of the snapshots whose combination is closest in L2 to the target profile (normal equations of
    the snapshots' Gram matrix), scaled to sum to one so the weights' scale is kept."""
    steps = np.asarray(snapshot_steps, dtype=np.float64)
    gammas = np.asarray(snapshot_gammas, dtype=np.float64)
    gram = inner_product(steps[:, None], gammas[:, None], steps[None, :], gammas[None, :])
    projection = inner_product(steps, gammas, target_step, target_gamma)
    solved = np.linalg.solve(gram, projection)
    return solved / solved.sum()


def combine(snapshots, weights) -> list[dict[str, torch.Tensor]]:
    """For each row of ``weights`` (targets x snapshots): sum_i weights[row][i] * snapshots[i], tensor by tensor,
    accumulated in float64. ``snapshots`` may be a generator: each is read once, whatever the targets."""
    weights = np.asarray(weights, dtype=np.float64).reshape(-1, np.shape(weights)[-1])
    totals: list[dict[str, torch.Tensor]] = [{} for _ in weights]
    dtypes = {}
    for i, snapshot in enumerate(snapshots):
        for name, tensor in snapshot.items():
            dtypes[name] = tensor.dtype
            for row, total in zip(weights, totals):
                total[name] = total.get(name, 0) + float(row[i]) * tensor.double()
    return [{name: tensor.to(dtypes[name]) for name, tensor in total.items()} for total in totals]


class PowerFunctionEMA:
    """Power-function EMAs of a list of parameters, one per sigma_rel, updated after each optimizer step (the
    first update copies the weights). ``state_dict``/``load_state_dict`` for checkpoints."""

    def __init__(self, parameters, sigma_rels=(0.05, 0.10)):
        self.sigma_rels = tuple(float(s) for s in sigma_rels)
        self.gammas = tuple(gamma_of(s) for s in self.sigma_rels)
        self.averages = [[p.detach().clone() for p in parameters] for _ in self.sigma_rels]
        self.step = 0  # updates so far

    @torch.no_grad()
    def update(self, parameters) -> None:
        """Fold in the weights after the next optimizer step."""
        self.step += 1
        parameters = [p.detach() for p in parameters]
        for gamma, averages in zip(self.gammas, self.averages):
            torch._foreach_lerp_(averages, parameters, 1.0 - decay(gamma, self.step))

    def snapshot(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Every profile's averages as one flat dict of tensors (safetensors), keyed "<sigma_rel>/<name>"."""
        return {f"{sigma:.4f}/{name}": average.contiguous().cpu()
                for sigma, averages in zip(self.sigma_rels, self.averages) for name, average in zip(names, averages)}

    def load_snapshot(self, tensors: dict[str, torch.Tensor], names: list[str]) -> None:
        for sigma, averages in zip(self.sigma_rels, self.averages):
            for name, average in zip(names, averages):
                average.copy_(tensors[f"{sigma:.4f}/{name}"])

    def state_dict(self) -> dict:
        return {"step": self.step, "sigma_rels": list(self.sigma_rels), "averages": self.averages}

    def load_state_dict(self, state: dict) -> None:
        if [float(s) for s in state["sigma_rels"]] != list(self.sigma_rels):
            raise ConfigError(f"--posthoc_ema_sigma_rels {' '.join(map(str, self.sigma_rels))}: the checkpoint "
                              f"tracks {' '.join(map(str, state['sigma_rels']))}; resume with those")
        self.step = int(state["step"])
        for averages, stored in zip(self.averages, state["averages"]):
            torch._foreach_copy_(averages, [t.to(a.device, a.dtype) for a, t in zip(averages, stored)])


def snapshot_path(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, SNAPSHOT_FOLDER, f"step-{step:08d}.safetensors")


def save_snapshot(tracker: PowerFunctionEMA, output_dir: str, step: int) -> str:
    """Every profile's averages after ``step`` as safetensors (parameters named p0, p1, ... in the order of the
    objective's trained parameters), written whole, then renamed."""
    from safetensors.torch import save_file

    path = snapshot_path(output_dir, step)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    names = [f"p{i}" for i in range(len(tracker.averages[0]))]
    metadata = {"step": str(step), "sigma_rels": ",".join(f"{s:.4f}" for s in tracker.sigma_rels)}
    save_file(tracker.snapshot(names), path + ".tmp", metadata=metadata)
    os.replace(path + ".tmp", path)
    return path


def remove_snapshots_after(output_dir: str, step: int) -> None:
    """Snapshots of steps after ``step``: written by an attempt a resume forgets (they are written again)."""
    folder = os.path.join(output_dir, SNAPSHOT_FOLDER)
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if name.startswith("step-") and int(name[5:13]) > step:
            os.remove(os.path.join(folder, name))
