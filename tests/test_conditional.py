"""Class-conditional diffusion with classifier-free guidance: training, guidance, pipeline, errors."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, run_without_this_project
from tests.helpers import red_and_blue, run_training, tiny_args


@pytest.fixture(scope="module")
def small_unet_config(tmp_path_factory):
    config = json.loads((ROOT / "configs/models/unet-tiny.json").read_text())
    config.update(block_out_channels=[32, 64], norm_num_groups=8, dropout=0.0)
    path = tmp_path_factory.mktemp("cfg") / "unet.json"
    path.write_text(json.dumps(config))
    return path


def conditional_args(data, config, out, **overrides):
    values = dict(dataset_name=data, resolution=8, class_conditional=True, condition_dropout=0.2, ddpm_num_steps=100,
                  ddpm_beta_schedule="cosine",  # T = 100 linear betas would stop at alpha_bar 0.37, far from noise
                  train_batch_size=16, learning_rate=2e-3, lr_warmup_steps=10, validation_fraction=0.125,
                  num_sample_images=4, grid_num_inference_steps=5, ddpm_num_inference_steps=5)
    values.update(overrides)
    return tiny_args(None, config, out, **values)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_unet_config):
    """A tiny conditional model trained on red vs blue (a few hundred CPU steps)."""
    root = tmp_path_factory.mktemp("conditional")
    data = red_and_blue(root / "data")
    out = root / "run"
    run_training(conditional_args(data, small_unet_config, out, max_train_steps=300, logging_steps=50,
                                  checkpointing_steps=300, save_images_epochs=1000, num_sample_images=6))
    return out


@pytest.fixture(scope="module")
def untrained():
    """A ClassConditionalPipeline of random tiny networks, classes red and blue: for what holds of any weights
    (the guidance formula, a flag reaching the call), without the trained fixture's few hundred steps."""
    from diffusers import DDPMScheduler

    from pipelines import ClassConditionalPipeline
    from pipelines.pipeline_conditional import LabelEmbedding
    from tests.test_pipeline_conventions import tiny_unet

    torch.manual_seed(0)
    pipe = ClassConditionalPipeline(unet=tiny_unet(8, "classes"), scheduler=DDPMScheduler(num_train_timesteps=100),
                                    label_embedding=LabelEmbedding(["red", "blue"], 64).eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _mean_colour(images: np.ndarray) -> tuple[float, float]:
    """(mean red, mean blue) of (N, H, W, 3) images in [0, 1]."""
    return float(images[..., 0].mean()), float(images[..., 2].mean())


def test_conditioning_makes_the_asked_for_colour(trained):
    from pipelines import ClassConditionalPipeline

    pipe = ClassConditionalPipeline.from_pretrained(trained)  # its exported DDPM scheduler
    pipe.set_progress_bar_config(disable=True)
    splits = {}
    for scale in (1.0, 3.0):
        colours = {}
        for name in ("red", "blue"):
            images = pipe(class_labels=[name] * 16, guidance_scale=scale, num_inference_steps=50,
                          generator=torch.Generator().manual_seed(0), output_type="np").images
            colours[name] = _mean_colour(images)
        (red_r, red_b), (blue_r, blue_b) = colours["red"], colours["blue"]
        assert red_r > red_b and blue_b > blue_r, (scale, colours)  # class 0 red, class 1 blue
        splits[scale] = (red_r - red_b) + (blue_b - blue_r)
    assert splits[1.0] > 0.2 and splits[3.0] > 0.6, splits
    assert splits[3.0] > splits[1.0], splits  # guidance sharpens the split


def test_guidance_one_is_the_conditional_model_and_zero_the_unconditional(untrained):
    from pipelines.pipeline_conditional import guided_prediction

    unet, embedding = untrained.unet, untrained.label_embedding
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(40)
    with torch.no_grad():
        labels, null = embedding(torch.tensor([0, 1, 0])), embedding(embedding.no_label(3))
        assert torch.equal(null, embedding(torch.full((3,), 2)))  # "no class" is the entry after the classes
        conditional = unet(x, t, class_labels=labels).sample
        unconditional = unet(x, t, class_labels=null).sample
        assert torch.equal(guided_prediction(unet, x, t, labels, null, 1.0), conditional)
        assert torch.equal(guided_prediction(unet, x, t, labels, null, 0.0), unconditional)
        assert torch.equal(guided_prediction(unet, x, t, None, null, 4.0), unconditional)
        mixed = guided_prediction(unet, x, t, labels, null, 3.0)
    assert torch.allclose(mixed, unconditional + 3.0 * (conditional - unconditional), atol=1e-5)
    assert not torch.allclose(conditional, unconditional, atol=1e-3)  # the label does change the prediction


def test_the_pipeline_loads_both_ways_and_swaps_schedulers(trained, tmp_path):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    from pipelines import ClassConditionalPipeline

    pipe = ClassConditionalPipeline.from_pretrained(trained)
    assert pipe.class_names == ["red", "blue"]
    pipe.set_progress_bar_config(disable=True)
    by_index = pipe(class_labels=[0, 1, 1], num_inference_steps=4, generator=torch.Generator().manual_seed(3),
                    output_type="np").images
    by_name = pipe(class_labels=["red", "blue", "blue"], num_inference_steps=4,
                   generator=torch.Generator().manual_seed(3), output_type="np").images
    assert by_index.shape == (3, 8, 8, 3) and np.array_equal(by_index, by_name)
    unconditional = pipe(class_labels=None, batch_size=2, num_inference_steps=4, output_type="np").images
    assert unconditional.shape == (2, 8, 8, 3)
    for scheduler in (DDIMScheduler, DPMSolverMultistepScheduler):
        pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
        assert pipe(class_labels=[1], num_inference_steps=4, output_type="np").images.shape == (1, 8, 8, 3)
    with pytest.raises(ValueError, match="class label 2 is not a class index 0 ... 1 or a name"):
        pipe(class_labels=[2])
    with pytest.raises(ValueError, match="unknown class 'green'; the classes are red, blue"):
        pipe(class_labels=["green"])
    # A machine with only diffusers: the folder's own pipeline file, the same images for the same seed.
    code = f"""
import numpy, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({str(trained)!r}, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
images = pipe(class_labels=[0, 1, 1], num_inference_steps=4, generator=torch.Generator().manual_seed(3),
              output_type="np").images
numpy.save({str(tmp_path / "remote.npy")!r}, images)
print(type(pipe).__name__)
"""
    result = run_without_this_project(code, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ClassConditionalPipeline" in result.stdout
    assert np.array_equal(np.load(tmp_path / "remote.npy"), by_index)


def test_training_writes_one_grid_row_per_class(trained):
    from PIL import Image

    grids = sorted((trained / "samples").glob("*_ddim.png"))
    assert grids, list((trained / "samples").iterdir())
    width, height = Image.open(grids[-1]).size
    assert (width, height) == (16 * (3 * 8 + 4 * 2), 16 * (2 * 8 + 3 * 2))  # 2 rows (classes) x 3, framed, x16
    index = json.loads((trained / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_conditional", "ClassConditionalPipeline"]
    assert index["label_embedding"] == ["pipeline_conditional", "LabelEmbedding"]
    assert index["unet"] == ["diffusers", "UNet2DModel"]
    assert json.loads((trained / "label_embedding" / "config.json").read_text())["class_names"] == ["red", "blue"]


def test_resume_is_exact_with_condition_dropout(tmp_path, small_unet_config):
    data = red_and_blue(tmp_path / "data", count=32)
    common = dict(max_train_steps=6, checkpointing_steps=3, condition_dropout=0.5, random_flip=True)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_training(conditional_args(data, small_unet_config, straight, **common))
    run_training(conditional_args(data, small_unet_config, resumed, **{**common, "max_train_steps": 3}))
    run_training(conditional_args(data, small_unet_config, resumed, resume_from_checkpoint="latest", **common))
    a, b = (load_file(folder / "checkpoint-6" / "unet.safetensors") for folder in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    no_dropout = tmp_path / "no-dropout"
    run_training(conditional_args(data, small_unet_config, no_dropout, **{**common, "condition_dropout": 0.0}))
    c = load_file(no_dropout / "checkpoint-6" / "unet.safetensors")
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the dropout draws do change training


def test_labels_are_required_and_checked(tmp_path, small_unet_config, sprites_dir):
    import datasets

    from smallgen.errors import DataError

    no_labels = tmp_path / "nolabels.parquet"
    red_and_blue(tmp_path / "d")
    table = datasets.load_dataset("parquet", data_files=str(tmp_path / "d" / "train.parquet"))["train"]
    table.remove_columns("label").to_parquet(str(no_labels))
    with pytest.raises(DataError, match="has no label column: class-conditional training needs one"):
        run_training(conditional_args(no_labels, small_unet_config, tmp_path / "a", max_train_steps=1))
    with pytest.raises(DataError, match="has no column 'kind' \\(--label_column\\)"):
        run_training(conditional_args(tmp_path / "d" / "train.parquet", small_unet_config, tmp_path / "b",
                                      max_train_steps=1, label_column="kind"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_evaluate_fid_sweeps_guidance_with_class_balanced_samples(trained, tmp_path):
    from PIL import Image

    from pipelines import ClassConditionalPipeline
    from smallgen.errors import UserError
    from smallgen.evaluation import EvaluationArguments, evaluate, main, parse_args
    from smallgen.inception import resolve_inception_weights
    from smallgen.sample_sources import generate

    data = trained.parent / "data" / "train.parquet"
    argv = ["--pipeline", str(trained), "--dataset_name", str(data), "--split", "train", "--num_samples", "4",
            "--num_reference", "8", "--scheduler", "ddpm", "--num_inference_steps", "20", "--guidance_scale", "1", "3",
            "--inception_weights", resolve_inception_weights().path, "--cache_dir", str(tmp_path / "cache"),
            "--save_samples", str(tmp_path / "png"), "--output_json", str(tmp_path / "r.json")]
    results = main(argv)
    assert [(r["steps"], r["guidance_scale"]) for r in results] == [(20, 1.0), (20, 3.0)]
    assert all(r["fid"] > 0 and r["pipeline_class"] == "ClassConditionalPipeline" for r in results)
    saved = sorted((tmp_path / "png" / "steps_20_guidance_scale_3").glob("*.png"))
    colours = [np.asarray(Image.open(p), dtype=float).mean(axis=(0, 1)) for p in saved]
    assert [c[0] > c[2] for c in colours] == [True, False, True, False]  # image i is of class i mod 2
    pipe = ClassConditionalPipeline.from_pretrained(trained)
    pipe.set_progress_bar_config(disable=True)
    runs = [generate(pipe, EvaluationArguments(samples_dir=str(tmp_path), train_data_dir=str(tmp_path), num_samples=4,
                                               batch_size=b, scheduler="ddpm", seed=1), 10, torch.device("cpu"),
                     {"class_labels": lambda indices: [i % 2 for i in indices], "guidance_scale": 2.0})
            for b in (1, 3)]
    assert torch.equal(runs[0], runs[1])  # per-image seeds here too
    with pytest.raises(UserError, match="--num_samples 3 cannot be split evenly over the pipeline's 2 classes"):
        evaluate(parse_args([a if a != "4" else "3" for a in argv]))


def test_report_draws_classes_guidance_and_fid_against_guidance(trained, tmp_path):
    from PIL import Image

    from smallgen.plots import plot_fid_vs_guidance
    from smallgen.report import GUIDANCE_SCALES, main

    results = [{"model": str(trained), "pipeline_class": "ClassConditionalPipeline", "sampler": "ddpm", "steps": 20,
                "guidance_scale": g, "fid": fid, "kid_mean": 0.0, "kid_std": 0.0, "num_samples": 4,
                "num_reference": 8} for g, fid in ((0.0, 90.0), (1.0, 70.0), (3.0, 60.0))]
    fid_json = tmp_path / "fid.json"
    fid_json.write_text(json.dumps({"arguments": {}, "results": results}))
    report = main(["--runs", str(trained), "--fid", str(fid_json), "--output_dir", str(tmp_path / "report"),
                   "--skip_reverse", "--num_forward_images", "0"])
    text = open(report).read()
    name = trained.name
    for figure in (f"classes_{name}.png", f"guidance_{name}.png", "fid_vs_guidance.png"):
        assert f"figures/{figure}" in text and (tmp_path / "report" / "figures" / figure).exists(), figure
    grid = Image.open(tmp_path / "report" / "figures" / f"classes_{name}.png")
    assert grid.size == (16 * (6 * 8 + 7 * 2), 16 * (2 * 8 + 3 * 2))  # 2 classes x 6 samples, framed, x16
    assert "Rows: red, blue." in text and GUIDANCE_SCALES == (0.0, 1.0, 2.0, 4.0, 8.0)
    drawn = plot_fid_vs_guidance(results, str(tmp_path / "g.png"))
    assert list(drawn.values()) == [[(0.0, 90.0), (1.0, 70.0), (3.0, 60.0)]]


def multi_hot_sprites(folder, count=40):
    """Sprites-format files whose label rows hold several 1s (a context vector per image)."""
    from smallgen.data import SPRITES_IMAGES_FILE, SPRITES_LABELS_FILE
    from smallgen.testing import write_sprites_npy

    images, labels = write_sprites_npy(str(folder), num_images=count, seed=2)
    labels[::2, 4] = 1  # every other sprite also side-facing: multi-hot rows
    np.save(folder / SPRITES_LABELS_FILE, labels)
    assert (folder / SPRITES_IMAGES_FILE).exists()
    return labels


def test_context_vectors_train_resume_and_export(tmp_path, tiny_unet_config):
    from diffusers import DiffusionPipeline

    from pipelines import ClassConditionalPipeline

    labels = multi_hot_sprites(tmp_path / "data")
    common = dict(class_conditional=True, label_column="context", condition_dropout=0.3, use_ema=True,
                  checkpointing_steps=2, train_batch_size=8, ddpm_num_steps=50, ddpm_beta_schedule="cosine",
                  grid_num_inference_steps=3, ddpm_num_inference_steps=3, num_sample_images=5, save_images_epochs=1)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_training(tiny_args(tmp_path / "data", tiny_unet_config, straight, max_train_steps=4, **common))
    run_training(tiny_args(tmp_path / "data", tiny_unet_config, resumed, max_train_steps=2, **common))
    run_training(tiny_args(tmp_path / "data", tiny_unet_config, resumed, max_train_steps=4,
                           resume_from_checkpoint="latest", **common))
    # the label embedding, its optimizer moments and its EMA resume too
    for name in ("unet.safetensors", "label_embedding.safetensors", "training_state.safetensors"):
        a, b = (load_file(folder / "checkpoint-4" / name) for folder in (straight, resumed))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    weights = [load_file(straight / f"checkpoint-{n}" / "label_embedding.safetensors") for n in (2, 4)]
    assert not torch.equal(weights[0]["linear.weight"], weights[1]["linear.weight"])  # the label embedding trains
    index = json.loads((straight / "model_index.json").read_text())
    assert index["label_embedding"] == ["pipeline_conditional", "LabelEmbedding"]
    assert index["unet"] == ["diffusers", "UNet2DModel"]
    assert (straight / "label_embedding" / "pipeline_conditional.py").exists()
    pipe = ClassConditionalPipeline.from_pretrained(straight)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.label_embedding.config.multi_label and len(pipe.class_names) == labels.shape[1] == 5
    hero_side = pipe(context=[[1, 0, 0, 0, 1]] * 2, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                     output_type="np").images
    by_name = pipe(class_labels=[0], num_inference_steps=3, output_type="np").images  # label 0 as one-hot
    assert hero_side.shape == (2, 16, 16, 3) and by_name.shape == (1, 16, 16, 3)
    remote = DiffusionPipeline.from_pretrained(straight, trust_remote_code=True)
    remote.set_progress_bar_config(disable=True)
    again = remote(context=[[1, 0, 0, 0, 1]] * 2, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                   output_type="np").images
    assert np.array_equal(hero_side, again)
    with pytest.raises(ValueError, match="context must be rows of 5 values"):
        pipe(context=[[1, 0]])
    assert sorted(p.name for p in (straight / "samples").iterdir())[-1].endswith("_ddpm.png")


def test_the_guidance_sweep_reaches_the_pipeline(untrained, tmp_path):
    """evaluate_fid's --guidance_scale values each reach the call: the samples at 4 are the pipeline's own at 4 with
    class-balanced labels and the per-image generators, and differ from those at 0 (#34)."""
    from smallgen.evaluation import EvaluationArguments
    from smallgen.objectives.conditional import ClassConditionalObjective
    from smallgen.sample_sources import generate
    from smallgen.sampling import from_pipeline_output
    from smallgen.seeding import image_generators

    pipe = untrained
    args = EvaluationArguments(samples_dir=str(tmp_path), train_data_dir=str(tmp_path), num_samples=4, batch_size=4,
                               scheduler="ddpm", seed=2, guidance_scale=[0.0, 4.0])
    settings = ClassConditionalObjective.evaluation_settings(pipe, args)
    assert [s["guidance_scale"] for s in settings] == [0.0, 4.0]
    unguided, guided = (generate(pipe, args, 5, torch.device("cpu"), s) for s in settings)
    direct = pipe(class_labels=[0, 1, 0, 1], guidance_scale=4.0, num_inference_steps=5,
                  generator=image_generators(2, range(4), "cpu"), output_type="np").images
    assert torch.equal(guided, from_pipeline_output(direct)) and not torch.equal(guided, unguided)
