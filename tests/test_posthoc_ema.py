"""Post-hoc EMA math (smallgen/posthoc_ema.py) against the paper's formulas written out here, numerical
integration, and EMAs tracked directly."""

import json

import numpy as np
import pytest
import torch

from smallgen import posthoc_ema as phema


def test_sigma_rel_and_gamma_are_the_papers_pairs():
    """EDM2's two tracked profiles: sigma_rel 0.05 and 0.10 are g = 16.97 and 6.94 (the paper's values)."""
    assert phema.gamma_of(0.05) == pytest.approx(16.97, abs=0.01)
    assert phema.gamma_of(0.10) == pytest.approx(6.94, abs=0.01)
    for sigma in (0.01, 0.05, 0.1, 0.2, 0.28):
        assert phema.sigma_rel_of(phema.gamma_of(sigma)) == pytest.approx(sigma, rel=1e-9)
    with pytest.raises(ValueError, match="sigma_rel"):
        phema.gamma_of(0.3)


def test_the_inner_product_is_the_integral_of_the_two_densities():
    """Midpoint rule over (0, max t] with a million points against the closed form."""
    def density(tau, t, g):
        return np.where(tau <= t, (g + 1) * tau ** g / t ** (g + 1), 0.0)

    for t_a, g_a, t_b, g_b in ((100.0, 6.94, 100.0, 16.97), (40.0, 6.94, 100.0, 16.97), (100.0, 3.0, 30.0, 10.0)):
        n = 1_000_000
        tau = (np.arange(n) + 0.5) * max(t_a, t_b) / n
        numeric = np.sum(density(tau, t_a, g_a) * density(tau, t_b, g_b)) * max(t_a, t_b) / n
        assert phema.inner_product(t_a, g_a, t_b, g_b) == pytest.approx(numeric, rel=1e-5)
        assert phema.inner_product(t_b, g_b, t_a, g_a) == pytest.approx(numeric, rel=1e-5)  # symmetric


def test_tracking_weights_each_step_by_the_density_summed_over_it():
    """ema_t of unit vectors e_tau is the weight of step tau: (tau^(g+1) - (tau-1)^(g+1)) / t^(g+1)."""
    t = 50
    steps = torch.eye(t, dtype=torch.float64)  # theta after step tau is e_tau
    ema = phema.PowerFunctionEMA([torch.zeros(t, dtype=torch.float64)], sigma_rels=(0.05, 0.10))
    for tau in range(1, t + 1):
        ema.update([steps[tau - 1]])
    assert ema.step == t
    for gamma, (average,) in zip(ema.gammas, ema.averages):
        tau = np.arange(1, t + 1, dtype=np.float64)
        expected = (tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)) / t ** (gamma + 1)
        np.testing.assert_allclose(average.numpy(), expected, rtol=1e-10, atol=1e-14)


def _random_walk(steps, size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.cumsum(torch.randn(steps, size, generator=generator, dtype=torch.float64), dim=0)


def test_a_reconstructed_profile_equals_one_tracked_directly():
    """Weights that random-walk for 2,000 steps; sigma_rel 0.05 and 0.10 snapshotted every 100 steps; 0.07 and
    0.15 at the last step rebuilt from the snapshots and compared with EMAs tracked directly. Tolerance: 0.1% of
    how far the weights moved in the profile's window (measured: 0.011% and 0.019%; the nearest tracked
    profile is 10% and 14% away)."""
    trajectory = _random_walk(2000, 64)
    tracked = phema.PowerFunctionEMA([trajectory[0]], sigma_rels=(0.05, 0.10, 0.07, 0.15))
    snapshots, snapshot_steps = [], []
    for step in range(1, 2001):
        tracked.update([trajectory[step - 1]])
        if step % 100 == 0:
            snapshots += [{"w": tracked.averages[0][0].clone()}, {"w": tracked.averages[1][0].clone()}]
            snapshot_steps += [step, step]
    gammas = [tracked.gammas[0], tracked.gammas[1]] * (len(snapshot_steps) // 2)
    for index, sigma in ((2, 0.07), (3, 0.15)):
        weights = phema.coefficients(snapshot_steps, gammas, 2000, phema.gamma_of(sigma))
        (rebuilt,) = phema.combine(iter(snapshots), [weights])
        rebuilt = rebuilt["w"]
        direct = tracked.averages[index][0]
        window = int(2000 * (1 - 3 * sigma))
        moved = (trajectory[-1] - trajectory[window]).norm()
        assert (rebuilt - direct).norm() < 1e-3 * moved, (sigma, float((rebuilt - direct).norm() / moved))
    one_hot = phema.coefficients(snapshot_steps, gammas, 2000, tracked.gammas[1])
    np.testing.assert_allclose(one_hot, np.eye(len(snapshot_steps))[-1], atol=1e-8)  # a snapshot is itself


def papers_coefficients(steps, gammas, target_step, target_gamma):
    """Written out as the paper's Algorithm 3 reads: A[i, j] = <p_i, p_j>, b[i] = <p_i, p_target>,
    x = A^-1 b, normalised to sum 1; the inner product from Eq. 151, its own statement here."""
    def dot(t_a, g_a, t_b, g_b):
        if t_a < t_b:
            return (g_a + 1) * (g_b + 1) * (t_a / t_b) ** g_b / ((g_a + g_b + 1) * t_b)
        return (g_a + 1) * (g_b + 1) * (t_a / t_b) ** -g_a / ((g_a + g_b + 1) * t_a)

    a = np.array([[dot(ti, gi, tj, gj) for tj, gj in zip(steps, gammas)] for ti, gi in zip(steps, gammas)])
    b = np.array([dot(ti, gi, target_step, target_gamma) for ti, gi in zip(steps, gammas)])
    x = np.linalg.solve(a, b)
    return x / x.sum()


def test_the_coefficients_are_the_papers_least_squares_written_out():
    steps = [250, 250, 500, 500, 750, 750, 1000, 1000]
    gammas = [16.97, 6.94] * 4
    target = (900, phema.gamma_of(0.08))
    np.testing.assert_allclose(phema.coefficients(steps, gammas, *target), papers_coefficients(steps, gammas, *target),
                               rtol=1e-9)


def test_snapshots_round_trip_as_flat_tensors():
    parameters = [torch.randn(3, 2), torch.randn(4)]
    ema = phema.PowerFunctionEMA(parameters)
    ema.update([p + 1 for p in parameters])
    ema.update([p + 2 for p in parameters])
    flat = ema.snapshot(["a", "b"])
    assert sorted(flat) == ["0.0500/a", "0.0500/b", "0.1000/a", "0.1000/b"]
    other = phema.PowerFunctionEMA([torch.zeros(3, 2), torch.zeros(4)])
    other.load_snapshot(flat, ["a", "b"])
    assert all(torch.equal(x, y) for xs, ys in zip(ema.averages, other.averages) for x, y in zip(xs, ys))
    restored = phema.PowerFunctionEMA([torch.zeros(3, 2), torch.zeros(4)])
    restored.load_state_dict(ema.state_dict())
    assert restored.step == 2 and all(torch.equal(x, y) for xs, ys in zip(ema.averages, restored.averages)
                                      for x, y in zip(xs, ys))


def test_training_stores_snapshots_that_a_resume_writes_again_the_same(sprites_dir, tiny_unet_config, tmp_path):
    """--posthoc_ema: snapshots every 2 steps and at the last; the 0.10 profile at step 3 is the weights after
    steps 1-3 weighted by the profile's density (read from the checkpoints); a run resumed from step 2
    removes a snapshot of the forgotten attempt and writes the rest again, bit for bit."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file

    from smallgen.errors import ConfigError
    from tests.helpers import run_training, tiny_args

    common = dict(posthoc_ema=True, posthoc_ema_every=2, max_train_steps=3, checkpointing_steps=1)
    out = tmp_path / "run"
    run_training(tiny_args(sprites_dir, tiny_unet_config, out, **common))
    assert sorted(p.name for p in (out / "posthoc-ema").iterdir()) == ["step-00000002.safetensors",
                                                                       "step-00000003.safetensors"]
    last = out / "posthoc-ema" / "step-00000003.safetensors"
    with safe_open(last, "pt") as f:
        assert f.metadata() == {"step": "3", "sigma_rels": "0.0500,0.1000"}
    snapshot = load_file(last)
    gamma = phema.gamma_of(0.10)
    weights = [(tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)) / 3 ** (gamma + 1) for tau in (1, 2, 3)]
    trained = [list(load_file(out / f"checkpoint-{step}" / "unet.safetensors").values()) for step in (1, 2, 3)]
    names = list(load_file(out / "checkpoint-1" / "unet.safetensors"))
    from diffusers import UNet2DModel

    order = [name for name, _ in UNet2DModel.from_pretrained(out / "unet").named_parameters()]
    for i, name in enumerate(order):
        expected = sum(w * step[names.index(name)].double() for w, step in zip(weights, trained))
        torch.testing.assert_close(snapshot[f"0.1000/p{i}"].double(), expected, rtol=1e-5, atol=1e-6)

    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "checkpoint-3")
    (resumed / "posthoc-ema" / "step-00000004.safetensors").write_bytes(b"from a forgotten attempt")
    run_training(tiny_args(sprites_dir, tiny_unet_config, resumed, resume_from_checkpoint="latest", **common))
    assert sorted(p.name for p in (resumed / "posthoc-ema").iterdir()) == ["step-00000002.safetensors",
                                                                           "step-00000003.safetensors"]
    for name in ("step-00000002.safetensors", "step-00000003.safetensors"):
        a, b = load_file(out / "posthoc-ema" / name), load_file(resumed / "posthoc-ema" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    shutil.rmtree(resumed / "checkpoint-3")
    with pytest.raises(ConfigError, match="the checkpoint tracks 0.05 0.1; resume with those"):
        run_training(tiny_args(sprites_dir, tiny_unet_config, resumed, resume_from_checkpoint="latest",
                               **common, posthoc_ema_sigma_rels=[0.05, 0.2]))
    with pytest.raises(ConfigError, match="keeps no EMA"):
        run_training(tiny_args(sprites_dir, None, tmp_path / "gan", model_type="dcgan", model_config_name_or_path=None,
                               base_channels=8, latent_dim=16, posthoc_ema=True))


def _flat_weights(folder):
    from diffusers import UNet2DModel

    return [p.detach().double() for p in UNet2DModel.from_pretrained(folder / "unet").parameters()]


def test_reconstruct_ema_scores_each_length_as_the_run_and_exports_the_best(sprites_dir, tiny_unet_config, tmp_path,
                                                                           inception, monkeypatch, capsys):
    """reconstruct_ema.py on an EDM run with --posthoc_ema (profiles 0.05 and 0.20, snapshots at steps 2 and 4):
    the export as trained scores what the run scored at its last step (the same evaluation settings: EDM's own
    fast sampler, not evaluate_fid.py's default); the exported
    weights are the best FID's EMA, equal to the snapshots weighted by the paper's least squares written out
    here; the trained export is kept, so a second call compares with it."""
    from safetensors.torch import load_file

    from smallgen.reconstruction import find_snapshots, reconstruct
    from smallgen.reconstruction import main as reconstruct_ema
    from tests.helpers import run_training, tiny_args

    monkeypatch.setenv("SMALLGEN_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    results = run_training(tiny_args(sprites_dir, tiny_unet_config, run, inception_weights=inception.path,
                                     model_type="edm", evaluate_num_samples=4, num_evaluations=1, max_train_steps=4,
                                     use_ema=True,
                                     posthoc_ema=True, posthoc_ema_every=2, posthoc_ema_sigma_rels=[0.05, 0.2]))
    scored = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if "evaluation/kid" in r]
    assert scored == [4]  # --num_evaluations 1: the last step only
    trained = _flat_weights(run)
    summary = reconstruct_ema(["--run", str(run), "--sigma_rel", "0.03", "0.08", "0.15"])
    assert "exported the EMA of sigma_rel" in capsys.readouterr().out
    assert summary["trained"]["fid"] == pytest.approx(results["evaluation_fid"], rel=1e-6)
    assert summary["trained"]["kid_mean"] == pytest.approx(results["evaluation_kid"], rel=1e-6, abs=1e-9)
    fids = [row["fid"] for row in summary["rows"]]
    assert len(set(fids)) == 3 and summary["chosen"]["fid"] == min(fids)  # three EMAs, the best exported
    chosen = summary["chosen"]["sigma_rel"]
    snapshots = [load_file(run / "posthoc-ema" / f"step-0000000{s}.safetensors") for s in (2, 4)]
    steps, gammas = [2, 2, 4, 4], [phema.gamma_of(0.05), phema.gamma_of(0.2)] * 2
    weights = papers_coefficients(steps, gammas, 4, phema.gamma_of(chosen))
    profiles = [(snapshot, f"{sigma:.4f}") for snapshot in snapshots for sigma in (0.05, 0.2)]
    for i, exported in enumerate(_flat_weights(run)):
        expected = sum(w * snapshot[f"{sigma}/p{i}"].double() for w, (snapshot, sigma) in zip(weights, profiles))
        torch.testing.assert_close(exported, expected, rtol=1e-5, atol=1e-6)
    (early,) = reconstruct(*find_snapshots(str(run), 2), [0.08])  # step 2: from step 2's snapshot alone
    weights = papers_coefficients([2, 2], gammas[:2], 2, phema.gamma_of(0.08))
    for i in range(len(trained)):
        expected = sum(w * snapshots[0][f"{sigma:.4f}/p{i}"].double() for w, sigma in zip(weights, (0.05, 0.2)))
        torch.testing.assert_close(early[f"p{i}"].double(), expected, rtol=1e-5, atol=1e-6)
    kept = load_file(run / "posthoc-ema" / "trained-export.safetensors")
    assert all(torch.equal(kept[f"p{i}"].double(), w) for i, w in enumerate(trained))
    saved = json.loads((run / "results.json").read_text())
    assert saved["posthoc_ema_sigma_rel"] == chosen and saved["posthoc_ema_step"] == 4
    card = (run / "README.md").read_text()
    assert card.count("## Post-hoc EMA") == 1 and "![posthoc-ema.png](posthoc-ema.png)" in card
    assert (run / "posthoc-ema.png").is_file()

    exported = _flat_weights(run)
    again = reconstruct_ema(["--run", str(run), "--sigma_rel", "0.08", "--no_export"])
    assert again["trained"] == summary["trained"]  # scored from the kept trained export, not the replaced one
    assert again["rows"][0] == next(r for r in summary["rows"] if r["sigma_rel"] == 0.08)
    assert all(torch.equal(a, b) for a, b in zip(_flat_weights(run), exported))  # --no_export: left as it was
    at_two = reconstruct_ema(["--run", str(run), "--sigma_rel", "0.08", "--step", "2", "--no_export"])
    assert at_two["step"] == 2 and at_two["rows"][0]["fid"] != again["rows"][0]["fid"]  # step 2's snapshot alone
    assert (run / "README.md").read_text().count("## Post-hoc EMA") == 1

    from smallgen import reconstruction

    scripted = iter([(3.0, 0.1), (1.0, 0.3), (2.0, 0.2), (5.0, 0.5)])  # FID and KID disagree on the best
    counts = []  # --num_samples wins over the run's --evaluate_num_samples (4)
    monkeypatch.setattr(reconstruction, "score", lambda pipeline, folder, evaluation: counts.append(
        evaluation.num_samples) or dict(zip(("fid", "kid_mean", "kid_std", "precision", "recall"),
                                            (*next(scripted), 0.0, 0.5, 0.5))))
    by_kid = reconstruct_ema(["--run", str(run), "--sigma_rel", "0.03", "0.08", "0.15", "--select", "kid",
                              "--no_export", "--num_samples", "3"])
    assert by_kid["chosen"]["sigma_rel"] == 0.03 and by_kid["trained"]["fid"] == 5.0
    assert counts == [3, 3, 3, 3] and by_kid["num_samples"] == 3


def test_reconstruct_ema_refuses_what_it_cannot_use(tmp_path, capsys):
    """One clear line and exit status 2: no --run, a folder that is not a run, a run without --posthoc_ema; a
    broken snapshot or a --step past the snapshots is named."""
    from smallgen.errors import UserError
    from smallgen.reconstruction import find_snapshots
    from smallgen.reconstruction import main as reconstruct_ema

    run = tmp_path / "run"
    run.mkdir()
    for argv, message in (([], "pass --run"), (["--run", str(run)], "no training_args.json"),
                          (["--run", str(run), "--sigma_rel", "0.3"], "--sigma_rel must be")):
        with pytest.raises(SystemExit) as exit_:
            reconstruct_ema(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    (run / "training_args.json").write_text(json.dumps({"model_type": "ddpm", "posthoc_ema": False}))
    with pytest.raises(SystemExit):
        reconstruct_ema(["--run", str(run)])
    assert "trained without --posthoc_ema" in capsys.readouterr().err
    with pytest.raises(UserError, match="holds no post-hoc EMA snapshots"):
        find_snapshots(str(run), None)
    ema = phema.PowerFunctionEMA([torch.zeros(3)])
    ema.update([torch.ones(3)])
    phema.save_snapshot(ema, str(run), 1)
    with pytest.raises(UserError, match="cover steps 1 to 1"):
        find_snapshots(str(run), 5)
    phema.save_snapshot(ema, str(run), 4)
    with pytest.raises(UserError, match="--step 3: no snapshot was stored at that step; the nearest are steps 1 and 4"):
        find_snapshots(str(run), 3)  # EDM2 refuses it too: between snapshots the fit is poor
    assert [s.step for s in find_snapshots(str(run), 4)[0]] == [1, 4]
    (run / "posthoc-ema" / "step-00000002.safetensors").write_bytes(b"cut short")
    with pytest.raises(UserError, match="step-00000002.safetensors is not a post-hoc EMA snapshot"):
        find_snapshots(str(run), None)


def test_the_tracked_profiles_are_a_list_flag_of_recipes_too(tmp_path):
    """--posthoc_ema_sigma_rels on the command line or as a YAML list (each item checked); it needs
    --posthoc_ema; the values must differ and stay in (0, 1/sqrt(12))."""
    from smallgen.config import parse_args
    from smallgen.errors import ConfigError

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("posthoc_ema: true\nposthoc_ema_sigma_rels: [0.04, 0.12]\n")
    assert parse_args(["--config", str(recipe)])[2].posthoc_ema_sigma_rels == [0.04, 0.12]
    assert parse_args(["--config", str(recipe), "--posthoc_ema_sigma_rels", "0.07"])[2].posthoc_ema_sigma_rels == [0.07]
    for text, message in (("[0.04, fast]", "posthoc_ema_sigma_rels must be a number"),
                          ("0.04", "posthoc_ema_sigma_rels must be a list")):
        recipe.write_text(f"posthoc_ema: true\nposthoc_ema_sigma_rels: {text}\n")
        with pytest.raises(ConfigError, match=message):
            parse_args(["--config", str(recipe)])
    for argv, message in ((["--posthoc_ema_sigma_rels", "0.07"], "needs --posthoc_ema"),
                          (["--posthoc_ema", "--posthoc_ema_sigma_rels", "0.07", "0.07"], "must differ"),
                          (["--posthoc_ema", "--posthoc_ema_sigma_rels", "0.3"], "must be above 0 and below"),
                          (["--posthoc_ema", "--posthoc_ema_sigma_rels", "0.07", "0.3"], "got 0.3")):  # every value
        with pytest.raises(ConfigError, match=message):
            parse_args(argv)
