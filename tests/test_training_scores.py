"""Scores while training (--evaluate_num_samples): the numbers evaluate_fid.py gives the same weights,
logged, drawn and exported; planned like the grids; a reference that cannot be used refused up front."""

import json

import pytest
import torch

from smallgen import budget
from smallgen.errors import ConfigError, UserError
from tests.helpers import run_training, tiny_args

SCORES = dict(evaluate_num_samples=4, evaluate_every=3, max_train_steps=4, use_ema=True)


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """The reference's features go to a cache of the test's own."""
    monkeypatch.setenv("SMALLGEN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_scores_while_training_equal_evaluate_fid_on_the_export(sprites_dir, tiny_unet_config, tmp_path, own_cache,
                                                                 inception, capsys):
    """The last step's scores are evaluate_fid.py's, called on the exported pipeline with the model type's fast
    sampler, the same seed and the same reference: the same samples, features and metrics."""
    from smallgen.evaluation import main as evaluate_fid

    out = tmp_path / "run"
    results = run_training(tiny_args(sprites_dir, tiny_unet_config, out, inception_weights=inception.path, **SCORES))
    output = capsys.readouterr().out
    assert "scores every 3 steps and at the last" in output and "scores of 4 samples against" in output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in rows if "evaluation/kid" in r]
    assert [r["step"] for r in scored] == [3, 4]
    assert scored[0]["evaluation/fid"] != scored[1]["evaluation/fid"]  # the model moved, the seeds did not
    assert list(own_cache.glob("fidelity/*.safetensors"))  # the reference's features, cached once
    (theirs,) = evaluate_fid(["--pipeline", str(out), "--train_data_dir", str(sprites_dir), "--resolution", "16",
                              "--num_reference", "4", "--num_samples", "4", "--scheduler", "ddim",
                              "--num_inference_steps", "50", "--seed", "7", "--inception_weights", inception.path,
                              "--cache_dir", str(own_cache)])
    last = scored[-1]
    for ours, key in (("fid", "fid"), ("kid", "kid_mean"), ("precision", "precision"), ("recall", "recall")):
        assert last[f"evaluation/{ours}"] == pytest.approx(theirs[key], rel=1e-6, abs=1e-9), ours
        assert results[f"evaluation_{ours}"] == last[f"evaluation/{ours}"]
    assert results["evaluation_step"] == 4 and results["evaluation_seconds"] > 0
    assert (out / "scores.png").is_file() and "![scores.png](scores.png)" in (out / "README.md").read_text()


def test_a_reference_that_cannot_be_used_is_refused_before_anything_is_written(sprites_dir, tiny_unet_config,
                                                                               tmp_path, own_cache, inception):
    out = tmp_path / "run"
    with pytest.raises(UserError, match="single split, 'train'"):
        run_training(tiny_args(sprites_dir, tiny_unet_config, out, inception_weights=inception.path,
                               evaluate_split="test", **SCORES))
    with pytest.raises(UserError, match="does not exist"):
        run_training(tiny_args(sprites_dir, tiny_unet_config, out, inception_weights=str(tmp_path / "no.pth"),
                               **SCORES))
    assert not out.exists()
    with pytest.raises(ConfigError, match="--evaluate_every needs --evaluate_num_samples"):
        run_training(tiny_args(sprites_dir, tiny_unet_config, out, evaluate_every=2))
    with pytest.raises(ConfigError, match="one of --evaluate_every and --num_evaluations"):
        run_training(tiny_args(sprites_dir, tiny_unet_config, out, evaluate_num_samples=4, evaluate_every=2,
                               num_evaluations=3, max_train_steps=2))  # were it not refused: a short run


def test_the_evaluations_are_planned_like_the_grids():
    """--evaluate_every; --num_evaluations spread; with a budget as many as fit in 15% of it, at least the last."""
    untimed = lambda: pytest.fail("timed although not needed")  # noqa: E731
    assert budget.evaluation_every(100, 7, None, None, untimed) == 7
    assert budget.evaluation_every(100, None, 4, 5.0, untimed) == 25
    assert budget.evaluation_every(100, None, None, None, untimed) == 10
    assert budget.evaluation_every(100, None, None, 1.0, lambda: 3.0) == 34  # 9 s of 60: three evaluations
    assert budget.evaluation_every(100, None, None, 1.0, lambda: 60.0) == 100  # none fits: the last only
    assert budget.evaluation_every(3, None, 10, None, untimed) == 1


def _scored(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k == "step" or k.startswith("evaluation/")} for r in rows
            if "evaluation/kid" in r]


def test_a_resumed_run_scores_as_the_straight_one(sprites_dir, tiny_unet_config, tmp_path, own_cache, inception):
    """The stored plan keeps the schedule; the log is cut back to the checkpoint and scored again the same."""
    import shutil

    common = dict(inception_weights=inception.path, checkpointing_steps=2, **SCORES)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_training(tiny_args(sprites_dir, tiny_unet_config, straight, **common))
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoint-4")
    run_training(tiny_args(sprites_dir, tiny_unet_config, resumed, resume_from_checkpoint="latest",
                           evaluate_every=None, num_evaluations=None,  # the stored plan's schedule, not the flags'
                           **{k: v for k, v in common.items() if k != "evaluate_every"}))
    assert _scored(resumed) == _scored(straight) and [r["step"] for r in _scored(straight)] == [3, 4]


def test_two_processes_each_draw_a_share_and_score_as_evaluate_fid(sprites_dir, tiny_unet_config, tmp_path, inception):
    """Each process draws its half of the images (image i from (seed, i)), gathered in order: the scores equal
    evaluate_fid.py's on the exported pipeline in one process, against the --evaluate_num_reference subset
    (8 reference images for 6 samples). The same run stores one set of post-hoc EMA snapshots."""
    from smallgen.evaluation import main as evaluate_fid
    from tests.helpers import launch_two_processes

    out, cache = tmp_path / "run", tmp_path / "cache"
    argv = tiny_args(sprites_dir, tiny_unet_config, out, inception_weights=inception.path, train_batch_size=4,
                     evaluate_num_samples=6, evaluate_num_reference=8, num_evaluations=1, max_train_steps=2,
                     use_ema=True, posthoc_ema=True, posthoc_ema_every=1)
    result = launch_two_processes(argv, env={"SMALLGEN_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (out / "posthoc-ema").iterdir()) == ["step-00000001.safetensors",
                                                                       "step-00000002.safetensors"]
    (last,) = _scored(out)
    from tests.helpers import CORES

    threads = torch.get_num_threads()
    torch.set_num_threads(CORES)  # as when the suite runs in one process: convolutions round by thread count
    try:  # (1e-6 of a feature apart at 1 and 2 threads, torch-fidelity's extractor too; FID at rel 1.6e-5)
        (theirs,) = evaluate_fid(["--pipeline", str(out), "--train_data_dir", str(sprites_dir), "--resolution",
                                  "16", "--num_reference", "8", "--num_samples", "6", "--scheduler", "ddim",
                                  "--num_inference_steps", "50", "--seed", "7", "--inception_weights",
                                  inception.path, "--cache_dir", str(cache)])
    finally:
        torch.set_num_threads(threads)
    assert last["step"] == 2 and last["evaluation/fid"] == pytest.approx(theirs["fid"], rel=1e-6)
    assert last["evaluation/kid"] == pytest.approx(theirs["kid_mean"], rel=1e-6, abs=1e-9)


class ScriptedScores:
    """TrainingScores with scripted KIDs, one per evaluation in turn: keep_best's choice is known."""

    kids: list = []

    def __init__(self, objective, accelerator, data_args, args):
        self.description, self.calls = "scripted scores", 0

    def prepare(self):
        pass

    def seconds(self):
        return 0.0

    def score(self):
        kid = self.kids[self.calls]
        self.calls += 1
        return {"kid": kid, "kid_std": 0.0, "fid": 100 * kid, "precision": 0.5, "recall": 0.5}


def _unet_parameters(folder):
    from diffusers import UNet2DModel

    return [p.detach() for p in UNet2DModel.from_pretrained(folder / "unet").parameters()]


def _same(a, b):
    import torch

    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_keep_best_exports_the_best_step_and_a_resume_keeps_it(sprites_dir, tiny_unet_config, tmp_path, monkeypatch,
                                                                capsys):
    """KIDs 3, 1, 2, 4 over four steps: the export holds step 2's EMA weights and says so, the checkpoints keep
    the last state; resumed from step 3 it still exports step 2; resumed from step 1 with other scores (best
    now step 3) the best folder written after that checkpoint is forgotten."""
    import shutil

    from smallgen import training_scores
    from tests.helpers import ema_weights

    monkeypatch.setattr(training_scores, "TrainingScores", ScriptedScores)
    monkeypatch.setattr(ScriptedScores, "kids", [3.0, 1.0, 2.0, 4.0])
    common = dict(evaluate_num_samples=4, evaluate_every=1, keep_best="kid", max_train_steps=4, use_ema=True,
                  checkpointing_steps=1)
    out = tmp_path / "run"
    results = run_training(tiny_args(sprites_dir, tiny_unet_config, out, **common))
    assert results["best_step"] == 2 and results["best_kid"] == 1.0
    assert "the weights of step 2, the best KID" in capsys.readouterr().out
    exported = _unet_parameters(out)
    assert _same(exported, ema_weights(out / "checkpoint-2"))
    assert not _same(exported, ema_weights(out / "checkpoint-4"))  # the checkpoints keep the last state
    assert sorted(p.name for p in out.glob("best-step-*")) == ["best-step-1", "best-step-2"]  # checkpoint-1 names 1

    again = tmp_path / "again"  # resumed after the best: keeps it
    shutil.copytree(out, again)
    shutil.rmtree(again / "checkpoint-4")
    monkeypatch.setattr(ScriptedScores, "kids", [4.0])
    run_training(tiny_args(sprites_dir, tiny_unet_config, again, resume_from_checkpoint="latest", **common))
    assert _same(_unet_parameters(again), exported)

    early = tmp_path / "early"  # resumed before step 2's best: its folder is forgotten, step 1 stays the best
    shutil.copytree(out, early)
    for step in (2, 3, 4):
        shutil.rmtree(early / f"checkpoint-{step}")
    monkeypatch.setattr(ScriptedScores, "kids", [5.0, 6.0, 7.0])
    resumed = run_training(tiny_args(sprites_dir, tiny_unet_config, early, resume_from_checkpoint="latest", **common))
    assert resumed["best_step"] == 1 and [p.name for p in early.glob("best-step-*")] == ["best-step-1"]
    assert _same(_unet_parameters(early), ema_weights(out / "checkpoint-1"))
