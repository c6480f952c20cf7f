"""benchmarks/posthoc_ema.py end to end on a tiny recipe: a real budgeted run with post-hoc snapshots and
scores while training, reconstruct_ema.py on it, one summary."""

import json
import sys

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import posthoc_ema  # noqa: E402

TINY_RECIPE = """
model_type: edm
model_config_name_or_path: {unet}
train_data_dir: {data}
resolution: 16
train_batch_size: 8
eval_batch_size: 8
learning_rate: 1.0e-3
lr_warmup_steps: 2
logger: none
num_sample_images: 4
grid_num_inference_steps: 2
max_train_steps: 4
use_ema: true
inception_weights: {weights}
"""


def test_the_fixed_ema_and_the_post_hoc_best_are_scored_alike(sprites_dir, tiny_unet_config, tmp_path, inception,
                                                             monkeypatch):
    monkeypatch.setenv("SMALLGEN_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.format(unet=tiny_unet_config, data=sprites_dir, weights=inception.path))
    out = tmp_path / "out"
    summary = posthoc_ema.main(["--config", str(recipe), "--minutes", "0.05", "--evaluate_num_samples", "4",
                                "--num_samples", "6", "--sigma_rel", "0.05", "0.15", "--output_dir", str(out)])
    training = json.loads((out / "run" / "results.json").read_text())
    reconstruction = json.loads((out / "run" / "posthoc-ema" / "reconstruction.json").read_text())
    assert summary["steps"] == training["global_step"] and reconstruction["num_samples"] == 6
    assert summary["steps_share"] == training["clock_seconds"] / 3
    assert summary["evaluation_share"] == training["evaluation_seconds"] / 3 > 0
    assert summary["fixed_ema_fid"] == reconstruction["trained"]["fid"]
    assert summary["posthoc_fid"] == min(fid for _, fid, _ in summary["curve"]) == reconstruction["chosen"]["fid"]
    assert summary["fid_gain"] == 1 - summary["posthoc_fid"] / summary["fixed_ema_fid"]
    assert "| fixed EMA (the recipe's) |" in (out / "posthoc_ema.md").read_text()
    assert json.loads((out / "posthoc_ema.json").read_text()) == json.loads(json.dumps(summary))
