"""Every pipeline we export behaves like diffusers' own, with diffusers' DDPMPipeline as the reference.

The conventions are those diffusers' pipelines are held to by its ``PipelineTesterMixin``
(``tests/pipelines/test_pipelines_common.py``): save/load round trips with both loaders,
``from_pretrained`` keywords, ``from_pipe``, ``Cls(**pipe.components)``, offload, dtypes, output
types, generator lists, ``TypeError`` on unknown keywords, non-square sizes and the progress bar.
Each test is one convention, run for every case below on tiny random networks; where DDPMPipeline
itself does not hold a convention, the test says so and checks what it does instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, fresh_interpreter_environment, run_without_this_project

STEPS = 2  # sampling steps of every call


@dataclass(frozen=True)
class Case:
    pipeline: str  # class name
    scheduler: str | None = None  # "module:Class" of the scheduler, None: no scheduler
    labels: str | None = None  # None, "classes" or "context": what the call is conditioned on

    @property
    def diffusion(self) -> bool:
        return self.scheduler is not None

    @property
    def reference(self) -> bool:
        return self.pipeline == "DDPMPipeline"


CASES = {
    "DDPMPipeline": Case("DDPMPipeline", "diffusers:DDPMScheduler"),
    "EDMPipeline-euler": Case("EDMPipeline", "diffusers:EDMEulerScheduler"),
    "EDMPipeline-dpmsolver": Case("EDMPipeline", "diffusers:EDMDPMSolverMultistepScheduler"),
    "EDMPipeline-heun": Case("EDMPipeline", "pipelines:EDMHeunScheduler"),
    "EDMPipeline-unipc": Case("EDMPipeline", "pipelines:EDMUniPCScheduler"),
    "FlowMatchPipeline-euler": Case("FlowMatchPipeline", "diffusers:FlowMatchEulerDiscreteScheduler"),
    "FlowMatchPipeline-heun": Case("FlowMatchPipeline", "diffusers:FlowMatchHeunDiscreteScheduler"),
    "ConsistencyPipeline": Case("ConsistencyPipeline", "diffusers:CMStochasticIterativeScheduler"),
    "MeanFlowPipeline": Case("MeanFlowPipeline", "diffusers:FlowMatchEulerDiscreteScheduler"),
    "ClassConditionalPipeline-classes": Case("ClassConditionalPipeline", "diffusers:DDIMScheduler", "classes"),
    "ClassConditionalPipeline-context": Case("ClassConditionalPipeline", "diffusers:DDPMScheduler", "context"),
    "GANPipeline": Case("GANPipeline"),
    "VAEPipeline": Case("VAEPipeline"),
}
DIFFUSION = [name for name, case in CASES.items() if case.diffusion]


def load_class(where: str):
    from smallgen.sampling import load_class as load

    return load(where)


def tiny_unet(sample_size, labels: str | None, pipeline: str = ""):
    from diffusers import UNet2DModel

    config = json.loads((ROOT / "configs/models/unet-tiny.json").read_text())
    config.update(sample_size=sample_size, block_out_channels=[16, 32], norm_num_groups=8)
    if labels:
        config["class_embed_type"] = "identity"
    if pipeline == "MeanFlowPipeline":
        config["class_embed_type"] = "timestep"  # its second time, t - r
    return UNet2DModel.from_config(config).eval()


def build(name: str, sample_size=8):
    """The case's pipeline from tiny random networks (seeded, eval mode)."""
    import diffusers

    import pipelines
    from models.baselines import ConvDecoder, ConvVAE
    from pipelines.pipeline_conditional import LabelEmbedding

    case = CASES[name]
    torch.manual_seed(0)
    if case.pipeline == "GANPipeline":
        return pipelines.GANPipeline(decoder=ConvDecoder(8, 10, base_channels=8).eval())
    if case.pipeline == "VAEPipeline":
        return pipelines.VAEPipeline(vae=ConvVAE(8, 10, base_channels=8).eval())
    scheduler_class = load_class(case.scheduler)
    scheduler = scheduler_class(num_train_timesteps=50) if "DDIM" in case.scheduler or "DDPM" in case.scheduler \
        else scheduler_class()
    components = {"unet": tiny_unet(sample_size, case.labels, case.pipeline), "scheduler": scheduler}
    if case.labels:
        components["label_embedding"] = LabelEmbedding(["cat", "dog", "ship"], 64,
                                                       multi_label=case.labels == "context").eval()
    module = diffusers if case.reference else pipelines
    pipeline = getattr(module, case.pipeline)(**components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def inputs(name: str, count: int) -> dict:
    """Call keywords for ``count`` images (besides generator and output_type)."""
    case = CASES[name]
    steps = {"num_inference_steps": STEPS} if case.diffusion else {}
    if case.labels == "classes":
        return {"class_labels": [["cat", "dog", 2][i % 3] for i in range(count)], **steps}
    if case.labels == "context":
        return {"context": [[1, i % 2, 0] for i in range(count)], **steps}
    return {"batch_size": count, **steps}


def generators(count: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(count)]


def images(pipeline, name: str, count: int = 2, seed: int = 0, **extra) -> np.ndarray:
    return pipeline(**inputs(name, count), generator=generators(count, seed), output_type="np", **extra).images


def module_dtypes(pipeline) -> set:
    return {module.dtype for module in pipeline.components.values() if isinstance(module, torch.nn.Module)}


# ----------------------------------------------------------------------------- calling


@pytest.mark.parametrize("name", CASES)
def test_output_types_agree_and_return_dict_false_is_a_tuple(name):
    import PIL.Image

    pipeline = build(name)
    as_np = images(pipeline, name)
    assert as_np.shape == (2, 8, 8, 3) and as_np.dtype == np.float32 and 0 <= as_np.min() <= as_np.max() <= 1
    as_pt = pipeline(**inputs(name, 2), generator=generators(2), output_type="pt").images
    assert isinstance(as_pt, torch.Tensor) and as_pt.shape == (2, 3, 8, 8)
    np.testing.assert_allclose(as_pt.permute(0, 2, 3, 1).cpu().numpy(), as_np, atol=1e-6)
    as_pil = pipeline(**inputs(name, 2), generator=generators(2), output_type="pil").images
    assert len(as_pil) == 2 and all(isinstance(image, PIL.Image.Image) and image.size == (8, 8) for image in as_pil)
    assert np.array_equal(np.stack([np.asarray(image) for image in as_pil]), (as_np * 255).round().astype(np.uint8))
    as_tuple = pipeline(**inputs(name, 2), generator=generators(2), output_type="np", return_dict=False)
    assert isinstance(as_tuple, tuple) and np.array_equal(as_tuple[0], as_np)


@pytest.mark.parametrize("name", CASES)
def test_a_list_of_generators_gives_each_image_its_own(name):
    """diffusers' test_inference_batch_single_identical: image i of a batch is the image its generator
    makes alone (to 1e-4, diffusers' tolerance: batched convolutions round differently), and one
    generator makes the same batch twice."""
    pipeline = build(name)
    batch = images(pipeline, name, count=3, seed=5)
    singles = np.stack([images(pipeline, name, count=1, seed=5 + i)[0] for i in range(3)])
    if CASES[name].labels:  # one image per label: image i alone needs label i
        singles = np.stack([pipeline(**{k: (v[i:i + 1] if isinstance(v, list) else v) for k, v in
                                        inputs(name, 3).items()}, generator=generators(1, 5 + i),
                                     output_type="np").images[0] for i in range(3)])
    # Heun's corrector evaluates the network twice a step, and so doubles the rounding (1.9e-4 seen on 1 thread)
    np.testing.assert_allclose(batch, singles, atol=5e-4 if "heun" in name else 1e-4)
    assert not np.allclose(batch[0], batch[1])
    one = pipeline(**inputs(name, 2), generator=torch.Generator().manual_seed(3), output_type="np").images
    again = pipeline(**inputs(name, 2), generator=torch.Generator().manual_seed(3), output_type="np").images
    assert np.array_equal(one, again)


@pytest.mark.parametrize("name", CASES)
def test_unknown_keywords_raise_type_error(name):
    pipeline = build(name)
    with pytest.raises(TypeError):
        pipeline(**inputs(name, 1), num_inference_step=4)  # a misspelt num_inference_steps
    with pytest.raises(TypeError):
        pipeline(**inputs(name, 1), guidance=2.0)


@pytest.mark.parametrize("name", CASES)
def test_out_of_range_inputs_raise_a_value_error_naming_the_argument(name):
    """batch_size < 1, num_inference_steps < 1, a generator list whose length is not the batch's, a non-finite
    guidance scale: one ValueError naming the argument. DDPMPipeline, diffusers' own, checks none of them and
    fails deep inside (a RuntimeError from a reshape or a negative size, a ZeroDivisionError for 0 steps) or uses
    the first generators of a longer list: the test says what it does."""
    pipeline, case = build(name), CASES[name]
    steps = {"num_inference_steps": STEPS} if case.diffusion else {}
    bad = [({"batch_size": 0, **steps}, "batch_size"), ({"batch_size": -1, **steps}, "batch_size"),
           ({**inputs(name, 2), "generator": generators(3)}, "generator")]
    if case.diffusion:
        bad.append(({**inputs(name, 1), "num_inference_steps": 0}, "num_inference_steps"))
    if case.pipeline == "ClassConditionalPipeline":
        bad += [({**inputs(name, 1), "guidance_scale": scale}, "guidance_scale") for scale in (float("nan"), float("inf"))]
    for keywords, argument in bad:
        if case.reference:
            if argument == "generator":  # it draws anyway, 2 images from 3 generators
                assert len(pipeline(**keywords, output_type="np").images) == 2
            else:
                with pytest.raises({"batch_size": RuntimeError, "num_inference_steps": ZeroDivisionError}[argument]):
                    pipeline(**keywords, output_type="np")
            continue
        with pytest.raises(ValueError, match=f"^{argument} "):
            pipeline(**keywords, output_type="np")


def test_labels_are_taken_the_ways_dits_pipeline_takes_them():
    """One int, one name, a list of either, nested lists flattened ([[1], [1]], as diffusers' batch tests build)."""
    pipeline = build("ClassConditionalPipeline-classes")
    name = pipeline.class_names[1]

    def draw(labels, count):
        return pipeline(class_labels=labels, num_inference_steps=STEPS, generator=generators(count),
                        output_type="np").images

    both = draw([1, 1], 2)
    for labels in ([[1], [1]], [name, name], [[name], [1]], np.array([1, 1]), torch.tensor([[1], [1]])):
        assert np.array_equal(draw(labels, 2), both), labels
    for label in (1, name, np.int64(1)):  # alone, image 0 rounds differently from the batch's (see above)
        np.testing.assert_allclose(draw(label, 1), both[:1], atol=1e-4)
    assert not np.allclose(draw(0, 1), both[:1], atol=1e-2)
    with pytest.raises(ValueError, match="unknown class 'dogg'"):
        draw("dogg", 1)
    with pytest.raises(ValueError, match="class label 7 is not a class index"):
        draw([[1], [7]], 2)
    with pytest.raises(ValueError, match="^class_labels holds no label"):
        pipeline(class_labels=[], num_inference_steps=STEPS)


@pytest.mark.parametrize("name", DIFFUSION)  # the VAE and GAN networks are square by design (models/baselines.py)
def test_non_square_sample_sizes(name):
    pipeline = build(name, sample_size=(8, 16))
    assert images(pipeline, name).shape == (2, 8, 16, 3)


@pytest.mark.parametrize("name", CASES)
def test_progress_bar_shows_the_steps_and_can_be_silenced(name, capsys):
    pipeline = build(name)
    pipeline.set_progress_bar_config(disable=False)
    images(pipeline, name)
    shown = capsys.readouterr().err
    if CASES[name].diffusion:
        assert f"{len(pipeline.scheduler.timesteps)}/{len(pipeline.scheduler.timesteps)}" in shown, shown
    else:
        assert shown == ""  # one network call: no loop, no bar (as diffusers' single-step pipelines)
    pipeline.set_progress_bar_config(disable=True)
    images(pipeline, name)
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- components and from_pipe


def public(config) -> dict:
    """A config without diffusers' bookkeeping (_name_or_path, _use_default_values, ...)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def same_pipeline(a, b, name: str) -> None:
    """Same class, same config (facts like class names included), same components' weights, same images."""
    assert type(a) is type(b)
    assert public(a.config) == public(b.config)
    for key, module in a.components.items():
        other = b.components[key]
        assert type(module) is type(other), key
        assert public(module.config) == public(other.config), key
        if isinstance(module, torch.nn.Module):
            theirs = other.state_dict()
            assert all(torch.equal(value, theirs[k]) for k, value in module.state_dict().items()), key
    assert np.array_equal(images(a, name), images(b, name))


@pytest.mark.parametrize("name", CASES)
def test_components_rebuild_an_equal_pipeline(name):
    pipeline = build(name)
    signature = set(type(pipeline).__init__.__code__.co_varnames[1:type(pipeline).__init__.__code__.co_argcount])
    assert set(pipeline.components) == signature  # every __init__ argument is a component
    same_pipeline(pipeline, type(pipeline)(**pipeline.components), name)


@pytest.mark.parametrize("name", CASES)
def test_from_pipe_builds_the_same_pipeline_and_swaps_a_component(name):
    pipeline = build(name)
    same_pipeline(pipeline, type(pipeline).from_pipe(pipeline), name)
    if CASES[name].diffusion:
        scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config)
        swapped = type(pipeline).from_pipe(pipeline, scheduler=scheduler)
        assert swapped.scheduler is scheduler and swapped.unet is pipeline.unet


# ----------------------------------------------------------------------------- devices and dtypes


@pytest.mark.parametrize("name", CASES)
def test_model_cpu_offload_names_every_network_and_samples(name):
    pipeline = build(name)
    networks = {k for k, v in pipeline.components.items() if isinstance(v, torch.nn.Module)}
    assert set(pipeline.model_cpu_offload_seq.split("->")) == networks
    expected = images(pipeline, name)
    pipeline.enable_model_cpu_offload(device="cpu")
    assert np.array_equal(images(pipeline, name), expected)
    assert np.array_equal(images(pipeline, name), expected)  # twice: the hooks reset after a call


@pytest.mark.parametrize("name", CASES)
def test_dtype_round_trip(name, tmp_path):
    """pipe.to(float16) casts every network and samples close to float32 (diffusers' test_float16_inference
    allows 5e-2); saved, and loaded with dtype=, it stays float16 and samples the same."""
    expected = images(build(name), name)
    pipeline = build(name).to(torch.float16)
    assert module_dtypes(pipeline) == {torch.float16}
    drawn = images(pipeline, name)
    assert np.abs(drawn.astype(np.float32) - expected).max() < 5e-2
    pipeline.save_pretrained(tmp_path)
    loaded = type(pipeline).from_pretrained(tmp_path, dtype=torch.float16)
    assert module_dtypes(loaded) == {torch.float16}
    assert np.array_equal(images(loaded, name), drawn)
    assert module_dtypes(type(pipeline).from_pretrained(tmp_path)) == {torch.float32}  # diffusers' default
    bfloat16 = build(name).to(torch.bfloat16)
    if CASES[name].reference:  # DDPMPipeline returns images in the network's dtype, which numpy lacks
        assert drawn.dtype == np.float16
        with pytest.raises(TypeError, match="BFloat16"):
            images(bfloat16, name)
    else:  # ours sample in float32 whatever the networks' dtype, and return float32
        assert drawn.dtype == np.float32
        coarse = images(bfloat16, name)  # 8 mantissa bits: finite and in range, not close at sigma 80
        assert coarse.dtype == np.float32 and np.isfinite(coarse).all() and 0 <= coarse.min() <= coarse.max() <= 1


# ----------------------------------------------------------------------------- saving and loading


@pytest.mark.parametrize("name", CASES)
def test_float64_samples_as_float32_does(name):
    """pipe.to(float64) casts every network and samples what float32 samples, to float32's rounding
    (DDPMPipeline draws its noise in the network's dtype: other images, in float64)."""
    expected = images(build(name), name)
    pipeline = build(name).to(torch.float64)
    assert module_dtypes(pipeline) == {torch.float64}
    drawn = images(pipeline, name)
    if CASES[name].reference:
        assert drawn.dtype == np.float64 and drawn.shape == expected.shape
    else:
        assert np.abs(drawn.astype(np.float64) - expected).max() < 1e-3


def saved_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", CASES)
def test_save_load_round_trip_with_the_class_loader(name, tmp_path):
    pipeline = build(name)
    pipeline.save_pretrained(tmp_path / "saved")
    files = saved_files(tmp_path / "saved")
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files), files  # safetensors only
    loaded = type(pipeline).from_pretrained(tmp_path / "saved")  # no trust_remote_code: the installed classes
    same_pipeline(pipeline, loaded, name)
    assert all(type(c).__module__.split(".")[0] != "diffusers_modules" for c in [loaded, *loaded.components.values()])
    loaded.save_pretrained(tmp_path / "again")
    assert saved_files(tmp_path / "again") == files
    same_pipeline(pipeline, type(pipeline).from_pretrained(tmp_path / "again"), name)


@pytest.mark.parametrize("name", CASES)
def test_from_pretrained_takes_diffusers_keywords(name, tmp_path):
    pipeline = build(name)
    cls = type(pipeline)
    pipeline.save_pretrained(tmp_path / "plain")
    for keyword in ("dtype", "torch_dtype"):
        assert module_dtypes(cls.from_pretrained(tmp_path / "plain", **{keyword: torch.bfloat16})) == {torch.bfloat16}
    first = next(k for k, v in pipeline.components.items() if v is not None)
    override = type(pipeline.components[first]).from_config(pipeline.components[first].config)
    assert getattr(cls.from_pretrained(tmp_path / "plain", **{first: override}), first) is override
    pipeline.to(torch.float16).save_pretrained(tmp_path / "variant", variant="fp16")
    assert any(".fp16." in f for f in saved_files(tmp_path / "variant"))
    loaded = cls.from_pretrained(tmp_path / "variant", variant="fp16", dtype=torch.float16)
    assert module_dtypes(loaded) == {torch.float16}
    with pytest.raises(ValueError, match="variant"):
        cls.from_pretrained(tmp_path / "variant", variant="nope")
    same_pipeline(build(name), cls.from_pretrained(tmp_path / "plain", use_safetensors=True, low_cpu_mem_usage=False),
                  name)
    same_pipeline(build(name), cls.from_pretrained(tmp_path / "plain", device_map="cpu"), name)


def fake_hub_cache(folder: Path, cache: Path, repo_id: str) -> None:
    """``folder`` as the Hub client's cache holds a downloaded snapshot of ``repo_id``."""
    import shutil

    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


@pytest.mark.parametrize("name", CASES)
def test_a_hub_id_loads_into_the_installed_classes_offline(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipeline = build(name)
    pipeline.save_pretrained(tmp_path / "saved")
    fake_hub_cache(tmp_path / "saved", tmp_path / "cache", "someone/tiny")
    loaded = type(pipeline).from_pretrained("someone/tiny", cache_dir=tmp_path / "cache")
    same_pipeline(pipeline, loaded, name)


HUB_LOAD = """
import json, sys, numpy as np, torch
import pipelines
from diffusers import DiffusionPipeline
report = {}
for name, class_name in json.load(open(sys.argv[1])):
    pipe = getattr(pipelines, class_name).from_pretrained("someone/" + name, cache_dir=sys.argv[2])
    kinds = [type(pipe).__module__] + [type(c).__module__ for c in pipe.components.values()]
    try:
        DiffusionPipeline.from_pretrained("someone/" + name, cache_dir=sys.argv[2] + "-diffusers")
        plain = "loaded"
    except ValueError as exc:
        plain = "needs trust_remote_code" if "trust_remote_code" in str(exc) else str(exc)
    report[name] = [sorted(set(k.split(".")[0] for k in kinds)), plain]
print(json.dumps(report))
"""


def test_a_hub_id_loads_into_the_installed_classes_from_a_server(tmp_path):
    """Online (a local server answering as the Hub): our class fetches the files and loads them into
    the installed classes; diffusers' own loader would have to run the repository's code."""
    import subprocess
    import sys

    from tests.fakehub import FakeHubRepos

    ours = [name for name, case in CASES.items() if not case.reference]
    for name in ours:
        build(name).save_pretrained(tmp_path / "repos" / name)
    (tmp_path / "jobs.json").write_text(json.dumps([[name, CASES[name].pipeline] for name in ours]))
    (tmp_path / "load.py").write_text(HUB_LOAD)
    with FakeHubRepos({f"someone/{name}": str(tmp_path / "repos" / name) for name in ours}) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_MODULES_CACHE": str(tmp_path / "m")}
        result = subprocess.run([sys.executable, str(tmp_path / "load.py"), str(tmp_path / "jobs.json"),
                                 str(tmp_path / "cache")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ours:
        libraries, plain = report[name]
        assert "diffusers_modules" not in libraries, (name, libraries)  # no repository code ran
        assert plain == "needs trust_remote_code", (name, plain)
    assert any(r.startswith("GET /someone/") for r in hub.requests)


# ----------------------------------------------------------------------------- diffusers' loader, elsewhere

LOAD_ELSEWHERE = """
import json, sys, numpy as np, torch
from diffusers import DiffusionPipeline
report = {}
for name, folder, resave in json.load(open(sys.argv[1])):
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    call = json.load(open(folder + "/../call.json"))
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    got = pipe(**call, generator=gens, output_type="np").images
    classes = [type(pipe).__name__] + sorted(f"{k}:{type(v).__name__}" for k, v in pipe.components.items())
    report[name] = [classes, float(np.abs(got - np.load(folder + "/../images.npy")).max())]
    if resave:
        pipe.save_pretrained(resave)
print(json.dumps(report))
"""


def run_elsewhere(jobs: list, tmp_path: Path, with_project: bool, label: str) -> dict:
    """Load each (name, folder, resave-to) with DiffusionPipeline.from_pretrained(trust_remote_code=True)
    in a fresh interpreter in another folder; {name: [class names, largest image difference]}."""
    import subprocess
    import sys

    (tmp_path / f"{label}.json").write_text(json.dumps(jobs))
    (tmp_path / f"{label}.py").write_text(LOAD_ELSEWHERE)
    where = tmp_path / label
    where.mkdir()
    if with_project:
        env = {**fresh_interpreter_environment(), "HF_MODULES_CACHE": str(where / "modules")}
        result = subprocess.run([sys.executable, str(tmp_path / f"{label}.py"), str(tmp_path / f"{label}.json")],
                                capture_output=True, text=True, cwd=where, env=env)
    else:
        code = f"import sys; sys.argv = ['', {str(tmp_path / f'{label}.json')!r}]\n" + LOAD_ELSEWHERE
        result = run_without_this_project(code, where)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_diffusers_loader_in_a_fresh_interpreter_with_and_without_this_project(tmp_path):
    """DiffusionPipeline.from_pretrained(folder, trust_remote_code=True) from another folder gives the
    same class, components and images, with this project importable and without it; what it saves
    there loads again on a machine without the project."""
    expected, jobs = {}, []
    for name in CASES:
        pipeline = build(name)
        case_dir = tmp_path / name
        pipeline.save_pretrained(case_dir / "pipeline")
        call = {k: v for k, v in inputs(name, 2).items()}
        (case_dir / "call.json").write_text(json.dumps(call))
        np.save(case_dir / "images.npy", images(pipeline, name))
        expected[name] = [type(pipeline).__name__] + sorted(f"{k}:{type(v).__name__}"
                                                            for k, v in pipeline.components.items())
        jobs.append([name, str(case_dir / "pipeline"), str(case_dir / "resaved" / "pipeline")])
    for with_project in (True, False):  # the run without the project also saves each pipeline again
        report = run_elsewhere([[n, f, None if with_project else r] for n, f, r in jobs], tmp_path, with_project,
                               f"load-{'with' if with_project else 'without'}")
        assert report == {name: [classes, 0.0] for name, classes in expected.items()}
    for name in CASES:  # the resaved folder finds its images and call beside it
        case_dir = tmp_path / name
        for file in ("call.json", "images.npy"):
            (case_dir / "resaved" / file).write_bytes((case_dir / file).read_bytes())
    report = run_elsewhere([[n, r, None] for n, _, r in jobs], tmp_path, False, "reload")
    assert report == {name: [classes, 0.0] for name, classes in expected.items()}
