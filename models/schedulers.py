r"""DDPM and DDIM written out from the papers, with diffusers' call shape.

This module is the diffusion math and nothing else: it knows no network and imports nothing from
diffusers. ``tests/test_schedulers.py`` proves it computes the same function as diffusers'
``DDPMScheduler`` and ``DDIMScheduler`` (and, without diffusers, that it samples a Gaussian exactly).

Notation (Ho et al. 2020, "DDPM"; Song et al. 2021, "DDIM"):

* ``beta_t``: variance of the noise added at step t, t = 0 ... T-1 (T = ``num_train_timesteps``).
* ``alpha_t = 1 - beta_t`` and ``alpha_bar_t = prod_{s <= t} alpha_s`` (``alphas_cumprod``).
* Forward process, in one jump:   q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), so
  ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps`` with eps ~ N(0, I).
* Posterior:  q(x_{t-1} | x_t, x_0) = N(mu_t, beta~_t I) with
  ``mu_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t``
  and ``beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t``.
* The network predicts eps ("epsilon"), x_0 ("sample") or v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0
  ("v_prediction"); each gives x_0 and eps given x_t.

Sampling with S < T steps visits a decreasing subsequence of timesteps; a DDPM step from t to its
predecessor t' uses the effective beta ``1 - alpha_bar_t / alpha_bar_t'``.

Tables (betas, alphas_cumprod) are float32 by default, built exactly as diffusers builds them, so
both produce the same numbers; pass ``dtype=torch.float64`` for exact math.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "cosine", "sigmoid")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_large")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
DDIM_TIMESTEP_SPACINGS = TIMESTEP_SPACINGS + ("quadratic",)


@dataclass
class SchedulerOutput:
    """What one reverse step returns: x_{t'} and the x_0 it was computed from."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def cosine_alpha_bar(t: float, s: float = 0.008) -> float:
    """Nichol & Dhariwal (2021): alpha_bar(t) = cos^2(((t + s) / (1 + s)) pi / 2), t in [0, 1]."""
    return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def make_betas(beta_schedule: str, num_train_timesteps: int, beta_start: float = 1e-4,
               beta_end: float = 0.02, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r"""The noise variances beta_0 ... beta_{T-1}.

    * ``linear``: evenly spaced from beta_start to beta_end (the DDPM paper: 1e-4 to 0.02, T = 1000).
    * ``scaled_linear``: sqrt(beta) evenly spaced, then squared (latent diffusion).
    * ``squaredcos_cap_v2`` (alias ``cosine``): beta_t = min(1 - alpha_bar((t+1)/T) / alpha_bar(t/T), 0.999)
      with the cosine alpha_bar above; keeps more signal at mid t than linear.
    * ``sigmoid``: beta_start + (beta_end - beta_start) sigmoid(linspace(-6, 6, T)) (GeoDiff).
    """
    T = num_train_timesteps
    if T < 1:
        raise ValueError(f"num_train_timesteps must be at least 1, got {T}")
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=dtype)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=dtype) ** 2
    if beta_schedule in ("squaredcos_cap_v2", "cosine"):
        betas = [min(1 - cosine_alpha_bar((i + 1) / T) / cosine_alpha_bar(i / T), 0.999) for i in range(T)]
        return torch.tensor(betas, dtype=dtype)
    if beta_schedule == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, T, dtype=dtype)) * (beta_end - beta_start) + beta_start
    raise ValueError(f"unknown beta schedule {beta_schedule!r}; choose one of {', '.join(BETA_SCHEDULES)}")


def inference_timesteps(spacing: str, num_train_timesteps: int, num_inference_steps: int,
                        steps_offset: int = 0) -> np.ndarray:
    """Decreasing timesteps visited when sampling with ``num_inference_steps`` steps.

    * ``leading`` (DDPM/DDIM papers' "uniform"): 0, k, 2k, ... with k = T // S, plus ``steps_offset``.
    * ``trailing``: round(T, T - T/S, ...) - 1, so the first step starts at T - 1.
    * ``linspace``: round(linspace(0, T - 1, S)).
    * ``quadratic`` (DDIM paper, CIFAR-10): int(linspace(0, sqrt(0.8 T), S)^2); dense near t = 0.
      As in the paper's code, small t may repeat (a repeated step changes nothing).
    """
    T, S = num_train_timesteps, num_inference_steps
    if not 1 <= S <= T:
        raise ValueError(f"num_inference_steps must be between 1 and num_train_timesteps={T}, got {S}")
    if spacing == "leading":
        steps = (np.arange(0, S) * (T // S)).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "trailing":
        steps = np.round(np.arange(T, 0, -T / S)).astype(np.int64) - 1
    elif spacing == "linspace":
        steps = np.linspace(0, T - 1, S).round()[::-1].astype(np.int64)
    elif spacing == "quadratic":
        steps = np.array([int(s) for s in np.linspace(0, np.sqrt(T * 0.8), S) ** 2], dtype=np.int64)[::-1]
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(DDIM_TIMESTEP_SPACINGS)}")
    if steps.max() >= T:  # diffusers indexes past its tables here and fails with an IndexError
        raise ValueError(f"steps_offset {steps_offset} with {S} inference steps starts at timestep {steps.max()}, past "
                         f"the last of {T} training timesteps: use at most {(T - 1 - steps_offset) // (T // S) + 1} "
                         "steps, or steps_offset 0")
    return steps.copy()


def randn(shape, generator, device, dtype) -> torch.Tensor:
    """Standard normal noise; with a list of generators, row i comes from generator i alone, so an
    image's noise does not depend on the batch it was drawn in (as diffusers' ``randn_tensor``)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generator])
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def _broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.flatten().reshape(-1, *([1] * (like.ndim - 1)))


class NoiseSchedule:
    """The forward process q and the algebra between x_0, eps, v and x_t; shared by both samplers."""

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 beta_schedule: str = "linear", prediction_type: str = "epsilon",
                 trained_betas=None, dtype: torch.dtype = torch.float32):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}")
        self.num_train_timesteps = num_train_timesteps
        self.prediction_type = prediction_type
        if trained_betas is not None:
            self.betas = torch.as_tensor(trained_betas, dtype=dtype)
        else:
            self.betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end, dtype)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.one = torch.tensor(1.0, dtype=dtype)
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self.timestep_spacing, self.steps_offset = "leading", 0

    def __len__(self) -> int:
        return self.num_train_timesteps

    def to(self, device) -> "NoiseSchedule":
        """Move the tables the training loss indexes every step (once, not per call)."""
        self.alphas_cumprod = self.alphas_cumprod.to(device)
        return self

    def _alpha_bar(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        table = self.alphas_cumprod.to(device=like.device, dtype=like.dtype)
        return _broadcast(table[timesteps.to(like.device)], like)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (one t per batch element)."""
        alpha_bar = self._alpha_bar(timesteps, original_samples)
        return alpha_bar**0.5 * original_samples + (1 - alpha_bar) ** 0.5 * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022)."""
        alpha_bar = self._alpha_bar(timesteps, sample)
        return alpha_bar**0.5 * noise - (1 - alpha_bar) ** 0.5 * sample

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) (for min-SNR loss weighting)."""
        alpha_bar = self.alphas_cumprod.to(timesteps.device)[timesteps]
        return alpha_bar / (1 - alpha_bar)

    def training_target(self, original_samples: torch.Tensor, noise: torch.Tensor,
                        timesteps: torch.Tensor) -> torch.Tensor:
        """What the network should output for this prediction type."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return original_samples
        return self.get_velocity(original_samples, noise, timesteps)

    def posterior(self, original_samples: torch.Tensor, sample: torch.Tensor, timestep: int,
                  prev_timestep: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t'} | x_t, x_0), t' = ``prev_timestep`` (default t - 1; -1 means x_0)."""
        prev_timestep = timestep - 1 if prev_timestep is None else int(prev_timestep)
        alpha_bar_t = self.alphas_cumprod[timestep]
        alpha_bar_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.one
        alpha_t = alpha_bar_t / alpha_bar_prev
        beta_t = 1 - alpha_t
        mean = (alpha_bar_prev**0.5 * beta_t / (1 - alpha_bar_t)) * original_samples + (
            alpha_t**0.5 * (1 - alpha_bar_prev) / (1 - alpha_bar_t)
        ) * sample
        variance = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t
        return mean, variance

    def predict_original_and_noise(self, model_output: torch.Tensor, sample: torch.Tensor,
                                   alpha_bar_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_0, eps) implied by the network's output at noise level alpha_bar_t."""
        beta_bar_t = 1 - alpha_bar_t
        if self.prediction_type == "epsilon":
            return (sample - beta_bar_t**0.5 * model_output) / alpha_bar_t**0.5, model_output
        if self.prediction_type == "sample":
            return model_output, (sample - alpha_bar_t**0.5 * model_output) / beta_bar_t**0.5
        original = alpha_bar_t**0.5 * sample - beta_bar_t**0.5 * model_output
        return original, alpha_bar_t**0.5 * model_output + beta_bar_t**0.5 * sample

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample  # DDPM/DDIM feed x_t as it is

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        """Choose the timesteps to visit (``self.timestep_spacing``, set by the sampler)."""
        steps = inference_timesteps(self.timestep_spacing, self.num_train_timesteps, num_inference_steps,
                                    self.steps_offset)
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(steps).to(device)

    def _next_listed_timestep(self, timestep) -> int:
        listed = self.timesteps.tolist()
        index = listed.index(int(timestep))
        return listed[index + 1] if index + 1 < len(listed) else -1


class DDPMSampler(NoiseSchedule):
    r"""Ancestral sampling of Ho et al. (2020), Algorithm 2, generalised to S <= T steps.

    One step from t to t' (the next listed timestep, -1 after the last):

    1. x_0 from the network output (``predict_original_and_noise``), clipped to [-r, r] if ``clip_sample``;
    2. mean mu = posterior mean of q(x_{t'} | x_t, x_0) with beta = 1 - alpha_bar_t / alpha_bar_{t'};
    3. x_{t'} = mu + sigma z, z ~ N(0, I), for t > 0, with
       sigma^2 = beta~ (``fixed_small``, the true posterior variance) or beta (``fixed_large``, the
       DDPM paper's CIFAR-10 choice, FID 3.17).
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, variance_type: str = "fixed_small",
                 clip_sample: bool = True, prediction_type: str = "epsilon", clip_sample_range: float = 1.0,
                 timestep_spacing: str = "leading", steps_offset: int = 0, dtype: torch.dtype = torch.float32):
        super().__init__(num_train_timesteps, beta_start, beta_end, beta_schedule, prediction_type, trained_betas, dtype)
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"unknown variance type {variance_type!r}; choose one of {', '.join(VARIANCE_TYPES)}")
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"unknown timestep spacing {timestep_spacing!r}; choose one of {', '.join(TIMESTEP_SPACINGS)}")
        self.variance_type = variance_type
        self.clip_sample = clip_sample
        self.clip_sample_range = clip_sample_range
        self.timestep_spacing = timestep_spacing
        self.steps_offset = steps_offset

    def previous_timestep(self, timestep: int) -> int:
        if self.num_inference_steps is None:
            return int(timestep) - 1
        return self._next_listed_timestep(timestep)

    def variance(self, timestep: int, prev_timestep: int) -> torch.Tensor:
        alpha_bar_t = self.alphas_cumprod[timestep]
        alpha_bar_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.one
        beta_t = 1 - alpha_bar_t / alpha_bar_prev
        if self.variance_type == "fixed_large":
            return beta_t
        # beta~ can be exactly 0 at t = 0; clamp as diffusers does so its log stays finite.
        return torch.clamp((1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t, min=1e-20)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True):
        t = int(timestep)
        prev_t = self.previous_timestep(t)
        alpha_bar_t = self.alphas_cumprod[t]
        original, _ = self.predict_original_and_noise(model_output, sample, alpha_bar_t)
        if self.clip_sample:
            original = original.clamp(-self.clip_sample_range, self.clip_sample_range)
        prev_sample, _ = self.posterior(original, sample, t, prev_t)
        if t > 0:
            # Same call as diffusers' randn_tensor on this device, so one generator drives both alike.
            noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
            prev_sample = prev_sample + self.variance(t, prev_t) ** 0.5 * noise
        if not return_dict:
            return prev_sample, original
        return SchedulerOutput(prev_sample, original)


class DDIMSampler(NoiseSchedule):
    r"""The DDIM update of Song et al. (2021), eq. (12), for any eta.

    From t to t':
        x_{t'} = sqrt(alpha_bar_{t'}) x_0 + sqrt(1 - alpha_bar_{t'} - sigma^2) eps + sigma z,
        sigma = eta sqrt((1 - alpha_bar_{t'}) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_{t'}).
    eta = 0 is deterministic (an ODE solver); eta = 1 matches DDPM's fixed_small variance.
    Past the last step alpha_bar is 1 (``set_alpha_to_one``) or alpha_bar_0.

    For the leading, trailing and linspace spacings t' = t - T // S, exactly as diffusers computes it
    (for trailing/linspace that is not always the next listed timestep); for the DDIM paper's
    ``quadratic`` spacing t' is the next listed timestep, as in the paper's code.
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, clip_sample: bool = True,
                 set_alpha_to_one: bool = True, steps_offset: int = 0, prediction_type: str = "epsilon",
                 clip_sample_range: float = 1.0, timestep_spacing: str = "leading",
                 dtype: torch.dtype = torch.float32):
        super().__init__(num_train_timesteps, beta_start, beta_end, beta_schedule, prediction_type, trained_betas, dtype)
        if timestep_spacing not in DDIM_TIMESTEP_SPACINGS:
            raise ValueError(
                f"unknown timestep spacing {timestep_spacing!r}; choose one of {', '.join(DDIM_TIMESTEP_SPACINGS)}"
            )
        self.clip_sample = clip_sample
        self.clip_sample_range = clip_sample_range
        self.set_alpha_to_one = set_alpha_to_one
        self.final_alpha_cumprod = self.one if set_alpha_to_one else self.alphas_cumprod[0]
        self.steps_offset = steps_offset
        self.timestep_spacing = timestep_spacing

    def previous_timestep(self, timestep: int) -> int:
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if self.timestep_spacing != "quadratic":
            return int(timestep) - self.num_train_timesteps // self.num_inference_steps
        return self._next_listed_timestep(timestep)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True):
        t = int(timestep)
        prev_t = self.previous_timestep(t)
        alpha_bar_t = self.alphas_cumprod[t]
        alpha_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        original, noise_pred = self.predict_original_and_noise(model_output, sample, alpha_bar_t)
        if self.clip_sample:
            original = original.clamp(-self.clip_sample_range, self.clip_sample_range)
        variance = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)
        sigma = eta * variance**0.5
        if use_clipped_model_output:  # eps re-derived from the clipped x_0 (GLIDE)
            noise_pred = (sample - alpha_bar_t**0.5 * original) / (1 - alpha_bar_t) ** 0.5
        prev_sample = alpha_bar_prev**0.5 * original + (1 - alpha_bar_prev - sigma**2) ** 0.5 * noise_pred
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("pass either generator or variance_noise, not both")
            if variance_noise is None:
                variance_noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
            prev_sample = prev_sample + sigma * variance_noise
        if not return_dict:
            return prev_sample, original
        return SchedulerOutput(prev_sample, original)
