"""diffusers' own ``PipelineTesterMixin`` (tests/pipelines/test_pipelines_common.py at v0.40.0, kept in
``../shared/diffusers-tests``) run on every pipeline class we export, as diffusers' ``ddim/test_ddim.py``
and ``dit/test_dit.py`` run it on theirs: tiny random components, one fast call's inputs.

The mixin's files are imported from there (never copied); without that folder every class here is skipped,
saying where it looked. The mixin itself skips what needs a GPU or xformers.
"""

from __future__ import annotations

import gc
import importlib
import sys
import unittest

import pytest
import torch

from tests.conftest import ROOT
from tests.test_pipeline_conventions import CASES, build

DIFFUSERS_TESTS = ROOT.parent / "shared" / "diffusers-tests"


def diffusers_test_modules(*names):
    """diffusers' modules ``tests.<name>``: our ``tests`` package is set aside while they load (theirs has
    the same name), then put back, so pytest goes on finding our test modules."""
    ours = {key: sys.modules.pop(key) for key in list(sys.modules) if key == "tests" or key.startswith("tests.")}
    sys.path.insert(0, str(DIFFUSERS_TESTS))
    try:
        return [importlib.import_module("tests." + name) for name in names]
    finally:
        sys.path.remove(str(DIFFUSERS_TESTS))
        for key in [key for key in sys.modules if key == "tests" or key.startswith("tests.")]:
            del sys.modules[key]
        sys.modules.update(ours)


if (DIFFUSERS_TESTS / "tests" / "pipelines" / "test_pipelines_common.py").is_file():
    common, pipeline_params = diffusers_test_modules("pipelines.test_pipelines_common", "pipelines.pipeline_params")
    PipelineTesterMixin = common.PipelineTesterMixin
else:  # the classes below still define, and each skips saying why
    pipeline_params = None
    PipelineTesterMixin = type("PipelineTesterMixin", (), {"required_optional_params": frozenset()})

pytestmark = pytest.mark.skipif(pipeline_params is None, reason=f"diffusers' pipeline tests not found at {DIFFUSERS_TESTS} "
                                                       "(see ../shared/diffusers-tests/README.md)")

# What none of our pipelines takes: prompts' image counts, and latents (samples start from each generator's
# noise, which is what makes image i of a batch the image its generator draws alone).
NOT_TAKEN = {"num_images_per_prompt", "latents", "callback", "callback_steps"}


class OurPipelineTests(PipelineTesterMixin):
    """The mixin's settings for one of our cases (``case`` names it in tests/test_pipeline_conventions.py)."""

    case: str
    @classmethod
    def setUpClass(cls):
        """The mixin's setUp and tearDown each run gc.collect (for GPU memory): over this process's heap of
        torch, diffusers and transformers that took 0.6 s a call here. Objects older than the class are
        frozen out of the collector's walk while it runs (nothing they hold is freed either way)."""
        super().setUpClass()
        gc.freeze()

    @classmethod
    def tearDownClass(cls):
        gc.unfreeze()
        super().tearDownClass()

    test_attention_slicing = False  # our pipelines have no attention-slicing switch (diffusers' DDIM test's too)
    test_xformers_attention = False

    @property
    def pipeline_class(self):
        import pipelines

        return getattr(pipelines, CASES[self.case].pipeline)

    @property
    def required_optional_params(self):
        optional = PipelineTesterMixin.required_optional_params - NOT_TAKEN
        return optional if CASES[self.case].diffusion else optional - {"num_inference_steps"}

    def get_dummy_components(self):
        return dict(build(self.case).components)

    def get_dummy_inputs(self, device, seed=0):
        case = CASES[self.case]
        inputs = {"generator": torch.Generator(device="cpu").manual_seed(seed), "output_type": "np"}
        if case.diffusion:
            inputs["num_inference_steps"] = 2
        if case.labels == "classes":
            inputs["class_labels"] = [1]
        elif case.labels == "context":
            inputs["context"] = [1, 0, 1]
        else:
            inputs["batch_size"] = 1
        return inputs


def unconditional(case_name: str):
    class Settings(OurPipelineTests):
        case = case_name
        params = pipeline_params.UNCONDITIONAL_IMAGE_GENERATION_PARAMS if pipeline_params else frozenset()
        batch_params = pipeline_params.UNCONDITIONAL_IMAGE_GENERATION_BATCH_PARAMS if pipeline_params else frozenset()

    return Settings


class EDMEulerPipelineFastTests(unconditional("EDMPipeline-euler"), unittest.TestCase):
    pass


class EDMHeunPipelineFastTests(unconditional("EDMPipeline-heun"), unittest.TestCase):
    """Heun calls the random UNet twice a step from sigma 80: a batch of 3, or weights loaded anew, round
    2.2e-4 apart in float32 (0.0 in float64), as diffusers' own tests allow for their multi-call samplers."""

    def test_inference_batch_single_identical(self):
        super().test_inference_batch_single_identical(expected_max_diff=5e-4)

    def test_pipeline_with_accelerator_device_map(self):
        super().test_pipeline_with_accelerator_device_map(expected_max_difference=5e-4)


class FlowMatchPipelineFastTests(unconditional("FlowMatchPipeline-euler"), unittest.TestCase):
    pass


class ConsistencyPipelineFastTests(unconditional("ConsistencyPipeline"), unittest.TestCase):
    pass


class MeanFlowPipelineFastTests(unconditional("MeanFlowPipeline"), unittest.TestCase):
    pass


class OneCallPipelineTests:
    """Baselines draw in one call: no num_inference_steps to copy into the batched call."""

    def test_inference_batch_single_identical(self):
        self._test_inference_batch_single_identical(batch_size=3, additional_params_copy_to_batched_inputs=[])


class GANPipelineFastTests(OneCallPipelineTests, unconditional("GANPipeline"), unittest.TestCase):
    pass


class VAEPipelineFastTests(OneCallPipelineTests, unconditional("VAEPipeline"), unittest.TestCase):
    pass


class ClassConditionalPipelineFastTests(OurPipelineTests, unittest.TestCase):
    """Class indices, as diffusers' DiT test passes them."""

    case = "ClassConditionalPipeline-classes"
    params = pipeline_params.CLASS_CONDITIONED_IMAGE_GENERATION_PARAMS if pipeline_params else frozenset()
    batch_params = pipeline_params.CLASS_CONDITIONED_IMAGE_GENERATION_BATCH_PARAMS if pipeline_params else frozenset()


class ContextConditionalPipelineFastTests(OurPipelineTests, unittest.TestCase):
    """A context vector (several labels an image) through the label embedding's linear map."""

    case = "ClassConditionalPipeline-context"
    params = frozenset({"context", "guidance_scale"})
    batch_params = frozenset({"context"})
