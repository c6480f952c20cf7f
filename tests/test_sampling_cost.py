"""benchmarks/sampling_cost.py end to end on a tiny protocol: a teacher, its consistency tuning, a longer
teacher and a GAN trained, every row scored and timed, one table and one plot; and the few-step table
with MeanFlow, two tunings and the 2-step middle level swept (slow: about 2 minutes each)."""

import json
import sys

import pytest

from tests.conftest import ROOT, SAMPLE_CIFAR10
from tests.test_time_to_fid import TINY_RECIPE

sys.path.insert(0, str(ROOT / "benchmarks"))
import sampling_cost  # noqa: E402
import time_to_fid  # noqa: E402


@pytest.fixture
def tiny_protocol(tmp_path, tiny_unet_config, monkeypatch):
    recipe = TINY_RECIPE.format(unet=tiny_unet_config).replace("grid_num_inference_steps: 2\n", "")
    edm = tmp_path / "tiny-edm.yaml"
    edm.write_text(recipe.replace("ddpm_num_steps: 50", "model_type: edm"))
    consistency = tmp_path / "tiny-cm.yaml"
    consistency.write_text(recipe.replace("ddpm_num_steps: 50", "model_type: consistency")
                           .replace(f"model_config_name_or_path: {tiny_unet_config}\n", ""))
    meanflow = tmp_path / "tiny-meanflow.yaml"
    meanflow.write_text(recipe.replace("ddpm_num_steps: 50", "model_type: meanflow"))
    gan = tmp_path / "tiny-dcgan.yaml"
    gan.write_text("model_type: dcgan\nbase_channels: 8\nlatent_dim: 16\ntrain_batch_size: 8\nlogger: none\n"
                   "max_train_samples: 64\nmax_validation_samples: 8\nnum_sample_images: 4\nmax_train_steps: 3\n")
    for name, path in (("quickstart", edm), ("quickstart-consistency", consistency), ("dcgan", gan),
                       ("quickstart-meanflow", meanflow)):
        monkeypatch.setitem(time_to_fid.RECIPES, name, (str(path), []))
    monkeypatch.setitem(time_to_fid.RECIPES, "quickstart-consistency-2stages", (str(consistency), ["--ct_stages", "2"]))
    monkeypatch.setitem(time_to_fid.PROTOCOLS, "cpu", time_to_fid.Protocol(
        plan={}, resolution=16, num_samples=10, num_reference=10,
        eval_flags=["--batch_size", "10", "--cache_dir", str(tmp_path / "cache")]))
    monkeypatch.setattr(sampling_cost, "TEACHER", ("quickstart", 0.02))
    monkeypatch.setitem(sampling_cost.TABLES, "nfe", (
        [("quickstart", 0.02), ("dcgan", 0.02), ("quickstart-consistency", 0.02)],
        [("quickstart-consistency", 0.02, "cm", [1, 2], []), ("quickstart", 0.02, "edm-unipc", [2], []),
         ("dcgan", 0.02, None, [None], [])]))
    monkeypatch.setitem(sampling_cost.TABLES, "few_step", (
        [("quickstart-meanflow", 0.04), ("dcgan", 0.04), ("quickstart", 0.02), ("quickstart-consistency", 0.02),
         ("quickstart-consistency-2stages", 0.02)],
        [("quickstart-meanflow", 0.04, "meanflow", [1, 2], []), ("dcgan", 0.04, None, [None], []),
         ("quickstart-consistency", 0.02, "cm", [2], ["--cm_middle_level", "16", "24"]),
         ("quickstart-consistency-2stages", 0.02, "cm", [1], [])]))
    return ["--dataset_name", str(SAMPLE_CIFAR10), "--output_dir", str(tmp_path / "out"), "--timing_images", "6"]


@pytest.mark.slow  # trains, tunes and scores tiny recipes: minutes
def test_one_command_trains_tunes_scores_times_and_plots(tiny_protocol, tmp_path, capsys):
    sampling_cost.main(tiny_protocol)
    out = tmp_path / "out"
    rows = json.loads((out / "sampling_cost.json").read_text())["rows"]
    assert [(r["model"], r["sampler"], r["nfe"]) for r in rows] == [
        ("quickstart-consistency, 0.02 min", "cm", 1), ("quickstart-consistency, 0.02 min", "cm", 2),
        ("quickstart, 0.02 min", "edm-unipc", 2), ("dcgan, 0.02 min", "direct", 1)]
    assert all(r["fid"] > 0 and r["images_per_second"] > 0 and r["num_samples"] == 10 for r in rows)
    tuned = json.loads((out / "quickstart-consistency-0.02min" / "training_args.json").read_text())
    assert tuned["init_from"] == str(out / "quickstart-0.02min")  # tuned from the teacher trained first
    assert len((out / "sampling_cost.md").read_text().splitlines()) == 2 + len(rows)
    assert (out / "sampling_cost.png").stat().st_size > 5000
    capsys.readouterr()
    sampling_cost.main(tiny_protocol)  # a rerun has every row: nothing trained, scored or timed again
    assert "training" not in capsys.readouterr().out
    assert json.loads((out / "sampling_cost.json").read_text())["rows"] == rows


@pytest.mark.slow  # trains, tunes and scores tiny recipes: minutes
def test_the_few_step_table_gives_meanflow_the_minutes_of_teacher_and_tuning(tiny_protocol, tmp_path):
    """--table few_step: MeanFlow and the DCGAN trained as long as the teacher and its tuning together, the
    2-step middle level swept (each row's PNGs drawn through its level), a second tuning with its own flags."""
    out = tmp_path / "out"
    sampling_cost.main([*tiny_protocol, "--table", "few_step"])
    rows = json.loads((out / "sampling_cost.json").read_text())["rows"]
    assert [(r["model"], r["sampler"], r["nfe"], r["setting"]) for r in rows] == [
        ("quickstart-meanflow, 0.04 min", "meanflow", 1, {}), ("quickstart-meanflow, 0.04 min", "meanflow", 2, {}),
        ("dcgan, 0.04 min", "direct", 1, {}),
        ("quickstart-consistency, 0.02 min", "cm", 2, {"timesteps": [16, 0]}),
        ("quickstart-consistency, 0.02 min", "cm", 2, {"timesteps": [24, 0]}),
        ("quickstart-consistency-2stages, 0.02 min", "cm", 1, {})]
    assert all(r["fid"] > 0 and r["images_per_second"] > 0 for r in rows)
    assert rows[3]["fid"] != rows[4]["fid"]
    for name in ("quickstart-consistency-0.02min", "quickstart-consistency-2stages-0.02min"):
        tuned = json.loads((out / name / "training_args.json").read_text())
        assert tuned["init_from"] == str(out / "quickstart-0.02min")
    assert json.loads((out / "quickstart-consistency-2stages-0.02min" / "training_args.json").read_text())["ct_stages"] == 2
    assert json.loads((out / "quickstart-meanflow-0.04min" / "training_args.json").read_text())["model_type"] == "meanflow"
    assert "cm, timesteps [16, 0]" in (out / "sampling_cost.md").read_text()


def test_every_consistency_run_is_tuned_from_the_teacher(tmp_path, monkeypatch):
    """Each quickstart-consistency* run is trained with --init_from the 5-minute teacher's folder; other runs
    from scratch; a finished run is not trained again. (The slow tests above run it end to end.)"""
    import argparse

    trained = {}
    monkeypatch.setattr(time_to_fid, "train", lambda recipe, minutes, protocol, args, folder:
                        trained.setdefault(recipe, (args.train_flag, folder)))
    done = sampling_cost.run_dir(tmp_path, "dcgan", 5)
    done.mkdir()
    (done / "results.json").write_text("{}")
    runs = [("quickstart", 5), ("quickstart-consistency", 1), ("quickstart-consistency-2stages", 1),
            ("quickstart-meanflow", 6), ("dcgan", 5)]
    sampling_cost.train_all(time_to_fid.PROTOCOLS["cpu"], argparse.Namespace(seed=0), tmp_path, runs)
    teacher = ["--init_from", str(sampling_cost.run_dir(tmp_path, *sampling_cost.TEACHER))]
    assert {recipe: flags for recipe, (flags, _) in trained.items()} == {
        "quickstart": [], "quickstart-consistency": teacher, "quickstart-consistency-2stages": teacher,
        "quickstart-meanflow": []}
    assert trained["quickstart-meanflow"][1] == tmp_path / "quickstart-meanflow-6min"


def test_the_protocol_flag_picks_time_to_fids_protocol(tmp_path, monkeypatch):
    """--protocol cpu10k trains and scores under time_to_fid's 10,000-sample protocol, not the default one."""
    seen = []

    def stop(protocol, *_):
        seen.append(protocol)
        raise RuntimeError("stop after the plan")

    monkeypatch.setattr(sampling_cost, "train_all", stop)
    for name in ("cpu", "cpu10k"):
        with pytest.raises(RuntimeError, match="stop after the plan"):
            sampling_cost.main(["--protocol", name, "--output_dir", str(tmp_path / name)])
    assert seen == [time_to_fid.PROTOCOLS["cpu"], time_to_fid.PROTOCOLS["cpu10k"]]
    assert seen[1].num_samples == seen[1].num_reference == 10000
