"""What every pipeline of ours shares: it is saved with its own code, and loads with diffusers' loader.

Self-contained (torch and diffusers only): ``save_pretrained`` copies this file, the pipeline's own
file and the code of any component class of ours (a scheduler, a network) into the folder, in
diffusers' layout for custom code: ``model_index.json`` names ``["pipeline_edm", "EDMPipeline"]`` and
``["scheduling_edm_heun", "EDMHeunScheduler"]``, the files lie at the root and in the component's
folder. So ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` loads it on a machine
with only diffusers, and a folder saved there saves again the same way.

``OurPipeline.from_pretrained`` is diffusers' loader with all its keywords; the one difference is that
it loads into the classes already imported in this process (the installed project) instead of
running the folder's copies of them, so it needs no ``trust_remote_code``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import shutil

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput


class PortablePipeline(DiffusionPipeline):
    # Modules, besides the pipeline's own, that define component classes of ours when this project is
    # installed (e.g. "models.baselines"); used only to load into them instead of a folder's copy.
    _installed_component_modules: tuple[str, ...] = ()

    # ------------------------------------------------------------------ saving with code

    def save_config(self, save_directory, push_to_hub: bool = False, **kwargs):
        """model_index.json (diffusers' save_pretrained calls this last), then the code it names."""
        super().save_config(save_directory, push_to_hub=push_to_hub, **kwargs)
        index_path = os.path.join(save_directory, self.config_name)
        with open(index_path) as handle:
            index = json.load(handle)
        index["_class_name"] = [_copy_code(type(self), save_directory), type(self).__name__]
        for name, entry in list(index.items()):
            component = getattr(self, name, None) if isinstance(entry, list) and name != "_class_name" else None
            if component is not None and not _from_known_library(type(component)):
                index[name] = [_copy_code(type(component), os.path.join(save_directory, name)),
                               type(component).__name__]
        with open(index_path, "w") as handle:
            json.dump(index, handle, indent=2, sort_keys=True)
            handle.write("\n")

    # ------------------------------------------------------------------ loading into this process's classes

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' ``DiffusionPipeline.from_pretrained``, every keyword as there. A Hub id is fetched
        first (files only: no code of the repository runs), so that ``load_config`` below applies."""
        folder = str(pretrained_model_name_or_path)
        if not os.path.isdir(folder):
            from huggingface_hub import snapshot_download

            options = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")
            folder = snapshot_download(folder, **{k: kwargs[k] for k in options if k in kwargs})
        return super().from_pretrained(folder, **kwargs)

    @classmethod
    def load_config(cls, pretrained_model_name_or_path, *args, **kwargs):
        """model_index.json as diffusers reads it, but naming this class and the component classes this
        process has imported, where the folder holds copies of them."""
        loaded = super().load_config(pretrained_model_name_or_path, *args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        if isinstance(config.get("_class_name"), list):
            config["_class_name"] = cls.__name__
        for name, entry in config.items():
            if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str):
                config[name] = cls._installed_component(entry) or entry
        return loaded

    @classmethod
    def _installed_component(cls, entry: list) -> list | None:
        """[module, class] of this process for a folder's [file, class] (None: not one of ours)."""
        library, class_name = entry
        for module_name in (cls.__module__, *cls._installed_component_modules):
            if module_name.rpartition(".")[2] != library:
                continue
            try:
                module = importlib.import_module(module_name)
            except ImportError:  # a machine without this project: the folder's copy loads instead
                continue
            if hasattr(module, class_name):
                return [module_name, class_name]
        return None

    @classmethod
    def _get_signature_types(cls):
        """diffusers' ``from_pipe`` keeps a network only if its exact class is among its annotation's. A
        network of ours is annotated with the class it derives from (the baselines' code lives in
        models/, outside this self-contained file), so every loaded subclass of that class counts."""
        return {name: tuple(dict.fromkeys(sub for base in bases for sub in _with_subclasses(base)))
                for name, bases in super()._get_signature_types().items()}

    # ------------------------------------------------------------------ what every __call__ shares

    def check_inputs(self, batch_size: int, generator, num_inference_steps: int | None = None,
                     guidance_scale: float | None = None) -> None:
        """ValueError naming the argument and what it may be (diffusers' own pipelines fail deep inside)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number of images, at least 1; got {batch_size!r}")
        if num_inference_steps is not None and (isinstance(num_inference_steps, bool)
                                                or not isinstance(num_inference_steps, int) or num_inference_steps < 1):
            raise ValueError(f"num_inference_steps must be a whole number, at least 1; got {num_inference_steps!r}")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"generator is a list of {len(generator)} generators for {batch_size} images: pass one "
                             "per image, or a single generator")
        if guidance_scale is not None and not (isinstance(guidance_scale, (int, float))
                                               and math.isfinite(guidance_scale)):
            raise ValueError(f"guidance_scale must be a finite number; got {guidance_scale!r}")

    def image_shape(self, batch_size: int, config) -> tuple[int, ...]:
        """(batch, channels, height, width) of a network config with ``sample_size`` int or (h, w)."""
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (batch_size, config.in_channels, height, width)

    def step_options(self, generator, **options) -> dict:
        """What this scheduler's ``step`` takes of ``generator`` and ``options`` (e.g. DDIM's ``eta``)."""
        parameters = inspect.signature(self.scheduler.step).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        return {k: v for k, v in {"generator": generator, **options}.items() if takes_any or k in parameters}

    def output(self, images: torch.Tensor, output_type: str, return_dict: bool):
        """Images in [-1, 1] as "pil", "np" (floats in [0, 1], NHWC) or "pt" (NCHW); then offload hooks reset."""
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt'; got {output_type!r}")
        images = (images.float() / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            images = images.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def _with_subclasses(base) -> list:
    if not isinstance(base, type):
        return [base]
    found = [base]
    for sub in base.__subclasses__():
        found += _with_subclasses(sub)
    return found


def _from_known_library(component_class: type) -> bool:
    """Whether diffusers loads this class from a library it knows (diffusers, transformers, ...)."""
    from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES

    return component_class.__module__.split(".")[0] in LOADABLE_CLASSES


def _copy_code(code_class: type, folder: str) -> str:
    """Copy the file defining ``code_class`` and the files it imports relatively into ``folder``;
    returns the module name diffusers will load it as (the file's name)."""
    from diffusers.utils.dynamic_modules_utils import get_relative_import_files

    source = inspect.getfile(code_class)
    os.makedirs(folder, exist_ok=True)
    for path in [source, *get_relative_import_files(source)]:
        target = os.path.join(folder, os.path.basename(path))
        if not os.path.exists(target) or not os.path.samefile(path, target):
            shutil.copyfile(path, target)
    return os.path.splitext(os.path.basename(source))[0]

