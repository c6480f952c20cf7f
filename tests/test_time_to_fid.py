"""benchmarks/time_to_fid.py end to end on a tiny protocol: real training runs, real FID, one table."""

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SAMPLE_CIFAR10

sys.path.insert(0, str(ROOT / "benchmarks"))
import time_to_fid  # noqa: E402

TINY_RECIPE = """
model_config_name_or_path: {unet}
ddpm_num_steps: 50
train_batch_size: 8
eval_batch_size: 8
max_train_samples: 64
max_validation_samples: 8
learning_rate: 1.0e-3
lr_warmup_steps: 2
logger: none
num_sample_images: 4
grid_num_inference_steps: 2
max_train_steps: 4
"""


@pytest.fixture
def tiny_protocol(tmp_path, tiny_unet_config, monkeypatch):
    ddpm = tmp_path / "tiny-ddpm.yaml"
    ddpm.write_text(TINY_RECIPE.format(unet=tiny_unet_config) + "ddpm_num_inference_steps: 3\n")
    gan = tmp_path / "tiny-dcgan.yaml"
    gan.write_text("model_type: dcgan\nbase_channels: 8\nlatent_dim: 16\ntrain_batch_size: 8\nlogger: none\n"
                   "max_train_samples: 64\nmax_validation_samples: 8\nnum_sample_images: 4\nmax_train_steps: 3\n")
    edm = tmp_path / "tiny-edm.yaml"
    edm.write_text(TINY_RECIPE.format(unet=tiny_unet_config).replace("ddpm_num_steps: 50", "model_type: edm"))
    monkeypatch.setitem(time_to_fid.RECIPES, "tiny-ddpm", (str(ddpm), []))
    monkeypatch.setitem(time_to_fid.RECIPES, "tiny-edm", (str(edm), [], ["edm-dpmsolver", "edm-heun"]))
    monkeypatch.setitem(time_to_fid.RECIPES, "tiny-dcgan", (str(gan), ["--use_ema"]))
    protocol = time_to_fid.Protocol(plan={0.02: ["tiny-ddpm", "tiny-edm", "tiny-dcgan"]}, resolution=16,
                                    num_samples=10, num_reference=10, sampler_steps=2,
                                    eval_flags=["--batch_size", "10", "--cache_dir", str(tmp_path / "cache")])
    monkeypatch.setitem(time_to_fid.PROTOCOLS, "tiny", protocol)
    return ["--protocol", "tiny", "--dataset_name", str(SAMPLE_CIFAR10), "--output_dir", str(tmp_path / "out")]


def test_the_data_row_scores_train_images_the_reference_lacks():
    """A subset reference (CPU protocol): the data row's images are other train images; a whole-split reference
    (GPU protocol): a random share of it, said so. (The slow test below runs the row end to end.)"""
    from smallgen.evaluation import EvaluationArguments
    from smallgen.reference import reference_indices

    reference = set(reference_indices(100, 30, EvaluationArguments.reference_seed).tolist())
    chosen, apart = time_to_fid.data_floor_indices(100, 30, 20, seed=1)
    assert apart and len(set(chosen.tolist())) == 20 and not reference & set(chosen.tolist())
    assert list(chosen) == sorted(chosen) and 0 <= chosen.min() and chosen.max() < 100
    again, _ = time_to_fid.data_floor_indices(100, 30, 20, seed=2)
    assert list(again) != list(chosen)  # the seed draws them
    whole, apart = time_to_fid.data_floor_indices(100, None, 20, seed=1)
    assert not apart and len(set(whole.tolist())) == 20


def test_each_run_is_scored_with_each_of_its_samplers(tmp_path, monkeypatch):
    """A diffusion recipe with its own samplers: one scoring each; without: the protocol's; a GAN: both
    BatchNorm modes; anything else once."""
    protocol = time_to_fid.PROTOCOLS["cpu"]
    monkeypatch.setitem(time_to_fid.RECIPES, "two-samplers", ("configs/quickstart.yaml", [],
                                                                ["edm-dpmsolver", "edm-heun"]))
    for name, pipeline in (("diffusion", "EDMPipeline"), ("gan", "GANPipeline"), ("vae", "VAEPipeline")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text(json.dumps({"_class_name": ["pipeline_x", pipeline]}))
    samplers = [s.sampler for s in time_to_fid.scorings("two-samplers", protocol, tmp_path / "diffusion")]
    assert samplers == ["edm-dpmsolver", "edm-heun"]
    assert [s.sampler for s in time_to_fid.scorings("quickstart-ddpm", protocol, tmp_path / "diffusion")] == [
        protocol.sampler]
    assert [s.batchnorm for s in time_to_fid.scorings("dcgan", protocol, tmp_path / "gan")] == list(
        time_to_fid.GAN_BATCHNORM_MODES)
    assert time_to_fid.scorings("vae", protocol, tmp_path / "vae") == [time_to_fid.Scoring()]


def test_the_10000_sample_protocol_scores_each_run_its_default_way_once(tmp_path):
    """cpu10k: 10,000 samples against 10,000 train images, the quick start and the DCGAN at 5 and 15 minutes,
    each run scored once: the recipe's first sampler, the GAN export's own BatchNorm mode (eval)."""
    protocol = time_to_fid.PROTOCOLS["cpu10k"]
    assert (protocol.num_samples, protocol.num_reference) == (10000, 10000)
    assert time_to_fid.planned_runs(protocol, time_to_fid.parse_args(["--protocol", "cpu10k"])) == [
        (5, "quickstart"), (5, "dcgan"), (15, "quickstart"), (15, "dcgan")]
    for name, pipeline in (("diffusion", "EDMPipeline"), ("gan", "GANPipeline")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text(json.dumps({"_class_name": ["pipeline_x", pipeline]}))
    assert time_to_fid.scorings("quickstart", protocol, tmp_path / "diffusion") == [
        time_to_fid.Scoring(sampler="edm-dpmsolver")]
    assert time_to_fid.scorings("dcgan", protocol, tmp_path / "gan") == [time_to_fid.Scoring(batchnorm="eval")]


def test_the_32px_protocol_trains_the_seeds_families_and_scores_meanflow_at_one_and_two_calls(tmp_path, monkeypatch):
    """cpu32: the seven families 10 minutes each at 32 px, 5,000 samples against 10,000 train images; the DDPM
    rows keep the seed's T = 300 and betas; MeanFlow is sampled with 1 and then 2 calls, the others at 10."""
    from smallgen.config import load_config_file

    protocol = time_to_fid.PROTOCOLS["cpu32"]
    assert (protocol.resolution, protocol.num_samples, protocol.num_reference) == (32, 5000, 10000)
    runs = time_to_fid.planned_runs(protocol, time_to_fid.parse_args(["--protocol", "cpu32"]))
    assert {minutes for minutes, _ in runs} == {10} and len(runs) == 7
    assert time_to_fid.planned_runs(protocol, time_to_fid.parse_args(  # --budgets: the protocol's families
        ["--protocol", "cpu32", "--budgets", "5"])) == [(5, recipe) for _, recipe in runs]
    assert time_to_fid.planned_runs(protocol, time_to_fid.parse_args(  # or the named ones, in or out of the plan
        ["--protocol", "cpu32", "--budgets", "2", "--recipes", "data", "ddpm-linear-t300"])) == [(2, "ddpm-linear-t300")]
    assert time_to_fid.planned_runs(protocol, time_to_fid.parse_args(  # the data row alone trains nothing
        ["--protocol", "cpu32", "--budgets", "2", "--recipes", "data"])) == []
    with pytest.raises(SystemExit, match="ddpm-linear-t300: not in the cpu32 protocol's plan; give --budgets"):
        time_to_fid.planned_runs(protocol, time_to_fid.parse_args(["--protocol", "cpu32", "--recipes", "ddpm-linear-t300"]))
    for name, schedule in (("cpu32-ddpm-cosine", "cosine"), ("cpu32-ddpm-linear", "linear")):
        recipe = load_config_file(str(ROOT / time_to_fid.RECIPES[name][0]))
        assert (recipe["ddpm_num_steps"], recipe["ddpm_beta_schedule"]) == (300, schedule)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": ["pipeline_x", "MeanFlowPipeline"]}))
    meanflow = time_to_fid.scorings("quickstart-meanflow-cifar", protocol, tmp_path)
    assert [s.steps for s in meanflow] == [1, 2] and {s.sampler for s in meanflow} == {"meanflow"}
    assert [s.steps for s in time_to_fid.scorings("cpu32-ddpm-linear", protocol, tmp_path)] == [None]
    commands = []

    def run(command, log):  # evaluate_fid.py's command, and the result it would write
        commands.append(command)
        out = Path(command[command.index("--output_json") + 1])
        out.write_text(json.dumps({"results": [{"nfe": 1}]}))

    monkeypatch.setattr(time_to_fid, "_run", run)
    args = time_to_fid.parse_args(["--protocol", "cpu32"])
    for index, scoring in enumerate(meanflow + time_to_fid.scorings("cpu32-ddpm-linear", protocol, tmp_path)):
        time_to_fid.evaluate(protocol, args, tmp_path, scoring, scoring.name(first=index == 0))
    steps = [c[c.index("--num_inference_steps") + 1] for c in commands]
    assert steps == ["1", "2", "10"] and len({c[c.index("--output_json") + 1] for c in commands}) == 3
    assert all(c[c.index("--num_samples") + 1] == "5000" and c[c.index("--resolution") + 1] == "32" for c in commands)


@pytest.mark.slow  # three recipes trained and six scorings: about 3 minutes
def test_every_recipe_is_trained_for_the_budget_and_scored(tiny_protocol, tmp_path, capsys):
    time_to_fid.main(tiny_protocol)
    table = json.loads((tmp_path / "out" / "time_to_fid.json").read_text())
    data, *rows = table["rows"]
    assert data["recipe"] == "data" and data["sampler"] == "train images" and data["steps"] == 0
    assert 0 < data["fid"] < min(r["fid"] for r in rows)  # real images: the floor under the protocol
    assert 0 <= data["precision"] <= 1 and 0 <= data["recall"] <= 1 and all("recall" in r for r in rows)
    floor_samples = sorted((tmp_path / "out" / "data-0min" / "fid_samples").glob("*.png"))
    assert len(floor_samples) == 10
    assert not _shared_images(floor_samples, num_reference=10)  # other images than the reference's
    assert [(r["recipe"], r["sampler"], r["nfe"]) for r in rows] == [
        ("tiny-ddpm", "ddim", 2), ("tiny-edm", "edm-dpmsolver", 2), ("tiny-edm", "edm-heun", 3),
        ("tiny-dcgan", "direct, BN eval", 1), ("tiny-dcgan", "direct, BN train", 1)]
    assert table["protocol"] == "tiny"
    scores = {"ddim": "fid.json", "edm-dpmsolver": "fid.json", "edm-heun": "fid-edm-heun.json",
              "direct, BN eval": "fid.json", "direct, BN train": "fid-batchnorm-train.json"}
    for row in rows:
        run_dir = tmp_path / "out" / f"{row['recipe']}-0.02min"
        trained = json.loads((run_dir / "results.json").read_text())
        scored = json.loads((run_dir / scores[row["sampler"]]).read_text())["results"][0]
        assert trained["max_train_minutes"] == 0.02 and row["steps"] == trained["global_step"] >= 1
        assert row["fid"] == scored["fid"] > 0 and row["num_samples"] == 10
        assert row["images_seen"] == trained["images_seen"]
    assert rows[1]["fid"] != rows[2]["fid"]  # the same EDM model, another sampler
    assert rows[3]["fid"] != rows[4]["fid"]  # batch statistics give other images
    assert rows[0]["steps"] <= 4  # the recipe's max_train_steps caps the budget
    markdown = (tmp_path / "out" / "time_to_fid.md").read_text().splitlines()
    assert len(markdown) == 8 and markdown[2].startswith("| data | 0 min") and markdown[3].startswith("| tiny-ddpm")
    assert (tmp_path / "out" / "time_to_fid.png").stat().st_size > 1000  # the samples of every row
    capsys.readouterr()
    time_to_fid.main(tiny_protocol)  # a rerun skips the rows it has
    assert "training" not in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "time_to_fid.json").read_text())["rows"] == table["rows"]


def _shared_images(pngs, num_reference):
    """How many of the PNGs are images of the protocol's reference (16 px, the default reference seed)."""
    import numpy as np
    from PIL import Image

    from smallgen.evaluation import EvaluationArguments
    from smallgen.reference import load_reference

    arguments = EvaluationArguments(samples_dir=str(pngs[0].parent), dataset_name=str(SAMPLE_CIFAR10),
                                    split="train", resolution=16, num_reference=num_reference)
    reference, _, _ = load_reference(arguments)
    known = {reference[i].numpy().tobytes() for i in range(len(reference))}
    return sum(np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1).tobytes() in known for p in pngs)


def test_a_failed_run_stops_with_its_log(tiny_protocol, tmp_path, monkeypatch):
    broken = tmp_path / "broken.yaml"
    broken.write_text("learning_rate: -1\n")
    monkeypatch.setitem(time_to_fid.RECIPES, "tiny-ddpm", (str(broken), []))
    with pytest.raises(SystemExit, match="learning_rate"):
        time_to_fid.main(tiny_protocol)
