"""models/schedulers.py is the same function as diffusers' DDPM/DDIM schedulers, and samples correctly."""

import itertools

import numpy as np
import pytest
import torch

from models.schedulers import (
    DDIMSampler,
    DDPMSampler,
    NoiseSchedule,
    inference_timesteps,
    make_betas,
)

SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
PREDICTIONS = ("epsilon", "sample", "v_prediction")
SPACINGS = ("leading", "trailing", "linspace")


def _diffusers():
    return pytest.importorskip("diffusers")


def _schedule_kwargs(schedule, T):
    kwargs = {"num_train_timesteps": T, "beta_schedule": schedule}
    if schedule == "scaled_linear":
        kwargs.update(beta_start=0.00085, beta_end=0.012)
    return kwargs


def _toy_model(sample, t, T):
    # A fixed smooth function of (x_t, t): stands in for a network with outputs of the right scale.
    return torch.tanh(0.7 * sample + 0.3 * torch.roll(sample, 1, dims=-1)) + 0.1 * (t / T)


def _pair(kind, schedule, T, **kwargs):
    """Our sampler and diffusers' scheduler built from the same arguments."""
    diffusers = _diffusers()
    base = _schedule_kwargs(schedule, T)
    if kind == "ddpm":
        return DDPMSampler(**base, **kwargs), diffusers.DDPMScheduler(**base, **kwargs)
    theirs_base = dict(base)
    if schedule == "sigmoid":  # diffusers' DDIM lacks the sigmoid schedule: hand it the betas
        theirs_base = {"num_train_timesteps": T, "trained_betas": make_betas("sigmoid", T).numpy()}
    return DDIMSampler(**base, **kwargs), diffusers.DDIMScheduler(**theirs_base, **kwargs)


def _max_diff(a, b):
    """Largest difference; NaN must sit in the same places (eta = 1 with alpha_bar_prev < 1 gives
    sqrt of a negative number in both implementations)."""
    a, b = a.double(), b.double()
    if not torch.equal(a.isnan(), b.isnan()):
        return float("inf")
    keep = ~a.isnan()
    return (a[keep] - b[keep]).abs().max().item() if keep.any() else 0.0


@pytest.mark.parametrize("T", [1000, 300, 7])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_tables_match_diffusers(schedule, T):
    ours, theirs = _pair("ddpm", schedule, T)
    assert _max_diff(ours.betas, theirs.betas) == 0
    assert _max_diff(ours.alphas_cumprod, theirs.alphas_cumprod) == 0
    exact = NoiseSchedule(**_schedule_kwargs(schedule, T), dtype=torch.float64)
    assert _max_diff(exact.alphas_cumprod, theirs.alphas_cumprod) < 1e-6
    assert torch.equal(ours.timesteps, theirs.timesteps)


def test_cosine_alias_and_cap():
    betas = make_betas("cosine", 1000, dtype=torch.float64)
    assert torch.equal(betas, make_betas("squaredcos_cap_v2", 1000, dtype=torch.float64))
    assert betas.max().item() == pytest.approx(0.999) and betas.min() > 0
    # alpha_bar follows cos^2 closely: at t = T/2, cos^2((0.5 + s)/(1 + s) * pi/2) / cos^2(s/(1+s) * pi/2).
    alpha_bar = torch.cumprod(1 - betas, 0)
    s = 0.008
    expected = np.cos((0.5 + s) / (1 + s) * np.pi / 2) ** 2 / np.cos(s / (1 + s) * np.pi / 2) ** 2
    assert alpha_bar[499].item() == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="unknown beta schedule 'cosinus'; choose one of"):
        make_betas("cosinus", 10)


@pytest.mark.parametrize("T", [1000, 300])
def test_inference_timesteps_match_diffusers(T):
    diffusers = _diffusers()
    for spacing, steps, offset in itertools.product(SPACINGS, (1, 7, 10, 50, 299, T), (0, 1)):
        if spacing != "leading" and offset:
            continue
        if steps == T and offset:
            continue  # leading + offset would step past T - 1
        for Theirs, Ours in ((diffusers.DDPMScheduler, DDPMSampler), (diffusers.DDIMScheduler, DDIMSampler)):
            theirs = Theirs(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
            ours = Ours(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
            theirs.set_timesteps(steps)
            ours.set_timesteps(steps)
            assert torch.equal(ours.timesteps, theirs.timesteps), (spacing, steps, offset)


def test_quadratic_spacing_is_the_ddim_papers():
    steps = inference_timesteps("quadratic", 1000, 10)
    # ermongroup/ddim: seq = [int(s) for s in np.linspace(0, sqrt(0.8 T), S) ** 2]
    assert steps.tolist() == [800, 632, 483, 355, 246, 158, 88, 39, 9, 0]  # (i * sqrt(800) / 9)^2, floored
    sampler = DDIMSampler(timestep_spacing="quadratic")
    sampler.set_timesteps(10)
    assert [sampler.previous_timestep(t) for t in sampler.timesteps.tolist()] == [632, 483, 355, 246, 158, 88, 39, 9, 0, -1]
    with pytest.raises(ValueError, match="num_inference_steps must be between 1 and"):
        inference_timesteps("leading", 100, 101)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_add_noise_and_velocity_match_diffusers(schedule, dtype, tol):
    ours, theirs = _pair("ddpm", schedule, 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(16, 3, 4, 4, generator=g, dtype=dtype)
    noise = torch.randn(16, 3, 4, 4, generator=g, dtype=dtype)
    t = torch.randint(0, 1000, (16,), generator=g)
    t[:2] = torch.tensor([0, 999])
    assert _max_diff(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t)) <= tol
    assert _max_diff(ours.get_velocity(x0, noise, t), theirs.get_velocity(x0, noise, t)) <= tol
    assert ours.add_noise(x0, noise, t).dtype == dtype


def test_posterior_matches_diffusers_ddpm_mean_and_variance():
    diffusers = _diffusers()
    for schedule in SCHEDULES:
        ours = NoiseSchedule(**_schedule_kwargs(schedule, 1000))
        theirs = diffusers.DDPMScheduler(**_schedule_kwargs(schedule, 1000), prediction_type="sample",
                                         clip_sample=False)
        g = torch.Generator().manual_seed(1)
        x0, xt = torch.randn(2, 8, 3, 4, 4, generator=g, dtype=torch.float64)
        for t in (1, 2, 500, 999):
            mean, variance = ours.posterior(x0, xt, t)
            # With x_0 given and t = 0 noise off, diffusers' step from t is the posterior mean plus noise.
            noise_free = theirs.step(x0, t, xt, generator=torch.Generator().manual_seed(5)).prev_sample
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
            assert _max_diff(mean + variance**0.5 * noise, noise_free) <= 1e-6
            assert _max_diff(variance, theirs._get_variance(t)) <= 1e-9
        mean0, _ = ours.posterior(x0, xt, 0)
        assert _max_diff(mean0, x0) <= 1e-6  # q(x_{-1} | x_0, x_0) is x_0 itself


def _run_trajectory(sched, T, steps, sample, seed, step_kwargs):
    generator = torch.Generator().manual_seed(seed)
    sched.set_timesteps(steps)
    x = sample.clone()
    trajectory = []
    for t in sched.timesteps:
        out = sched.step(_toy_model(x, t, T), t, x, generator=generator, **step_kwargs)
        x = out.prev_sample
        trajectory.append((x, out.pred_original_sample))
    return trajectory


def _assert_same_trajectories(kind, schedule, T, steps, dtype, tol, sched_kwargs, step_kwargs):
    ours, theirs = _pair(kind, schedule, T, **sched_kwargs)
    sample = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(steps), dtype=dtype)
    a = _run_trajectory(ours, T, steps, sample, 11, step_kwargs)
    b = _run_trajectory(theirs, T, steps, sample, 11, step_kwargs)
    assert len(a) == len(b) == len(theirs.timesteps)
    for i, ((xa, x0a), (xb, x0b)) in enumerate(zip(a, b)):
        assert xa.dtype == dtype
        detail = (kind, schedule, T, steps, sched_kwargs, step_kwargs, "step", i)
        assert _max_diff(xa, xb) <= tol, detail
        assert _max_diff(x0a, x0b) <= tol, detail


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_ddpm_trajectories_match_diffusers(schedule, prediction_type):
    rng = np.random.default_rng(hash((schedule, prediction_type)) % 2**32)
    for variance_type, spacing, clip in itertools.product(("fixed_small", "fixed_large"), SPACINGS, (True, False)):
        for T, steps in ((1000, 1), (1000, 7), (300, int(rng.choice([50, 300])))):
            kwargs = dict(prediction_type=prediction_type, variance_type=variance_type,
                          timestep_spacing=spacing, clip_sample=clip)
            _assert_same_trajectories("ddpm", schedule, T, steps, torch.float64, 1e-6, kwargs, {})
    full = dict(prediction_type=prediction_type, variance_type="fixed_large", clip_sample=True)
    _assert_same_trajectories("ddpm", schedule, 1000, 999, torch.float64, 1e-6, full, {})
    _assert_same_trajectories("ddpm", schedule, 1000, 1000, torch.float32, 1e-5, full, {})


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_ddim_trajectories_match_diffusers(schedule, prediction_type):
    for spacing, eta, clip, alpha_one in itertools.product(SPACINGS, (0.0, 0.5, 1.0), (True, False), (True, False)):
        kwargs = dict(prediction_type=prediction_type, timestep_spacing=spacing, clip_sample=clip,
                      set_alpha_to_one=alpha_one)
        for steps in (1, 7, 50):
            _assert_same_trajectories("ddim", schedule, 1000, steps, torch.float64, 1e-6, kwargs, {"eta": eta})
    kwargs = dict(prediction_type=prediction_type, steps_offset=1, clip_sample=False)
    _assert_same_trajectories("ddim", schedule, 1000, 999, torch.float64, 1e-6, kwargs, {"eta": 0.0})
    _assert_same_trajectories("ddim", schedule, 300, 300, torch.float32, 1e-5, dict(prediction_type=prediction_type),
                              {"eta": 1.0, "use_clipped_model_output": True})


def test_ddim_variance_noise_argument():
    ours, theirs = _pair("ddim", "linear", 1000)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    z = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    eps = _toy_model(x, 500, 1000)
    a = ours.step(eps, 500, x, eta=0.8, variance_noise=z).prev_sample
    b = theirs.step(eps, 500, x, eta=0.8, variance_noise=z).prev_sample
    assert _max_diff(a, b) <= 1e-6
    with pytest.raises(ValueError, match="either generator or variance_noise"):
        ours.step(eps, 500, x, eta=0.8, variance_noise=z, generator=torch.Generator())
    with pytest.raises(ValueError, match="set_timesteps"):
        DDIMSampler().step(eps, 500, x)


def test_bad_arguments_list_the_choices():
    with pytest.raises(ValueError, match="unknown prediction type 'noise'; choose one of epsilon, sample, v_prediction"):
        DDPMSampler(prediction_type="noise")
    with pytest.raises(ValueError, match="choose one of fixed_small, fixed_large"):
        DDPMSampler(variance_type="learned")
    with pytest.raises(ValueError, match="quadratic"):
        DDIMSampler(timestep_spacing="cubic")


# ----------------------------------------------------------------------------- no diffusers needed


def _gaussian_noise_predictor(schedule, mu, s):
    """The exact E[eps | x_t] when x_0 ~ N(mu, s^2) independently per coordinate."""
    def predict(x, t):
        alpha_bar = schedule.alphas_cumprod[int(t)].double()
        return (1 - alpha_bar) ** 0.5 * (x - alpha_bar**0.5 * mu) / (alpha_bar * s**2 + 1 - alpha_bar)
    return predict


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_samplers_carry_noise_to_a_known_gaussian(schedule):
    mu, s, n = 0.4, 0.3, 40_000
    start = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cases = [
        (DDIMSampler(beta_schedule=schedule, clip_sample=False, dtype=torch.float64), 250, {"eta": 0.0}),
        (DDIMSampler(beta_schedule=schedule, clip_sample=False, dtype=torch.float64), 1000, {"eta": 1.0}),
        (DDPMSampler(beta_schedule=schedule, clip_sample=False, dtype=torch.float64), 1000, {}),
        (DDPMSampler(beta_schedule=schedule, clip_sample=False, dtype=torch.float64,
                     variance_type="fixed_large"), 1000, {}),
    ]
    for sampler, steps, kwargs in cases:
        predict = _gaussian_noise_predictor(sampler, mu, s)
        sampler.set_timesteps(steps)
        x, g = start.clone(), torch.Generator().manual_seed(1)
        for t in sampler.timesteps:
            x = sampler.step(predict(x, t), t, x, generator=g, **kwargs).prev_sample
        label = (type(sampler).__name__, steps, kwargs, sampler.variance_type if hasattr(sampler, "variance_type") else "")
        assert abs(x.mean().item() - mu) < 0.01, label
        tol = 0.03 if getattr(sampler, "variance_type", "") == "fixed_large" else 0.01
        assert abs(x.std().item() - s) < tol, label


def test_deterministic_ddim_is_a_smooth_map():
    # eta = 0: the same noise gives the same sample, and the map is monotone for a 1-D Gaussian.
    sampler = DDIMSampler(clip_sample=False, dtype=torch.float64)
    predict = _gaussian_noise_predictor(sampler, 0.0, 0.5)
    errors = []
    for steps in (10, 50, 250):
        sampler.set_timesteps(steps)
        x = torch.linspace(-3, 3, 101, dtype=torch.float64)
        for t in sampler.timesteps:
            x = sampler.step(predict(x, t), t, x).prev_sample
        assert torch.all(torch.diff(x) > 0)
        # The exact flow for N(0, 0.5^2) data is x_0 = 0.5 x_T; DDIM is first order in the step size.
        errors.append((x - 0.5 * torch.linspace(-3, 3, 101, dtype=torch.float64)).abs().max().item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.03, errors


def test_training_target_per_prediction_type():
    x0 = torch.randn(4, 3, 2, 2)
    noise = torch.randn(4, 3, 2, 2)
    t = torch.tensor([0, 10, 500, 999])
    for prediction_type in PREDICTIONS:
        schedule = NoiseSchedule(prediction_type=prediction_type)
        target = schedule.training_target(x0, noise, t)
        xt = schedule.add_noise(x0, noise, t)
        alpha_bar = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        recovered_x0, recovered_eps = schedule.predict_original_and_noise(target, xt, alpha_bar)
        assert torch.allclose(recovered_x0, x0, atol=2e-3), prediction_type
        if prediction_type != "sample":  # eps from x_0 is ill-conditioned where alpha_bar ~ 1
            assert torch.allclose(recovered_eps, noise, atol=1e-4), prediction_type
    snr = NoiseSchedule().snr(t)
    assert snr[0] > snr[1] > snr[2] > snr[3] > 0


def test_a_steps_offset_past_the_schedule_is_refused_with_a_message():
    from diffusers import DDIMScheduler

    from smallgen.errors import UserError
    from smallgen.sample_sources import check_sampler_steps

    sampler = DDIMSampler(num_train_timesteps=100, steps_offset=1)
    with pytest.raises(ValueError, match="steps_offset 1 with 100 inference steps starts at timestep 100, past the "
                                         "last of 100 training timesteps: use at most 99 steps"):
        sampler.set_timesteps(100)
    sampler.set_timesteps(99)  # one fewer works, as in diffusers
    assert int(sampler.timesteps[0]) == 99
    with pytest.raises(UserError, match="--num_inference_steps 100 cannot work with this pipeline's scheduler"):
        check_sampler_steps(DDIMScheduler(num_train_timesteps=100, steps_offset=1), 100)
    check_sampler_steps(DDIMScheduler(num_train_timesteps=100, steps_offset=1), 99)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weights_per_prediction_type(prediction_type):
    """Hang et al.'s min(SNR, gamma) weight, divided by SNR for epsilon and by SNR + 1 for v."""
    from models.losses import DiffusionLoss

    schedule = NoiseSchedule(prediction_type=prediction_type)
    t = torch.tensor([0, 10, 100, 500, 999])
    snr = schedule.snr(t)
    clipped = snr.clamp(max=5.0)
    expected = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}[prediction_type]
    assert torch.allclose(DiffusionLoss(schedule, snr_gamma=5.0).weights(t), expected)
    assert DiffusionLoss(schedule).weights(t) is None
