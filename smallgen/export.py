"""Turning a run folder into a shareable pipeline: save_pretrained, a model card, push to the Hub."""

from __future__ import annotations

import dataclasses
import os

from smallgen.errors import UserError
from smallgen.files import save_json

# What stays local when the run folder is uploaded.
HUB_IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "best-step-*", "best-step-*/**", "posthoc-ema/**",
                       "logs/**", "*.tmp", "**/*.tmp", ".*"]
BEST_PREFIX = "best-step-"  # --keep_best: the best-scoring pipeline so far, named by its step


def best_folder(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, f"{BEST_PREFIX}{step}")


def save_best(objective, output_dir: str, step: int) -> None:
    """The pipeline of this step as the best so far: written whole, then renamed."""
    import shutil

    final = best_folder(output_dir, step)
    objective.export(final + ".tmp")
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(final + ".tmp", final)


def remove_bests_except(output_dir: str, keep: set) -> None:
    """Best folders of other steps than ``keep`` (the run's best, and those the checkpoints still name: a
    resume from one of them needs its folder). One written after the checkpoint a run resumed from goes
    with the rest of that attempt."""
    import shutil

    for name in os.listdir(output_dir):
        if name.startswith(BEST_PREFIX) and name[len(BEST_PREFIX):] not in {str(step) for step in keep}:
            shutil.rmtree(os.path.join(output_dir, name))


def export_run(objective, data_args, args, results: dict, sample_images: list[str], say=print,
               figures: list[str] = (), best_step: int | None = None) -> None:
    """The end of a run: the objective's pipeline (``best_step``'s, saved by ``save_best``, if given),
    results.json and the model card in ``args.output_dir``, then the push to the Hub when asked (main
    process only)."""
    import shutil

    if best_step is None:
        card = objective.export(args.output_dir)
    else:
        shutil.copytree(best_folder(args.output_dir, best_step), args.output_dir, dirs_exist_ok=True)
        card = objective.model_card()
    save_json(os.path.join(args.output_dir, "results.json"), results)
    data_values = {k: v for k, v in dataclasses.asdict(data_args).items() if v is not None}
    write_model_card(args.output_dir, model_description=card.description, dataset=data_args.dataset_name,
                     arguments={**card.arguments, **args.to_public_dict(), **data_values},
                     metrics={k: v for k, v in results.items() if v is not None},
                     sample_images=sample_images, figures=figures, tags=card.tags,
                     trust_remote_code=card.trust_remote_code,
                     load_from=args.output_dir)  # push_to_hub points it at the repo
    best = "" if best_step is None else f": the weights of step {best_step}, the best {args.keep_best.upper()}"
    say(f"pipeline saved to {args.output_dir}{best}")
    if args.push_to_hub:
        repo_id = push_to_hub(args.output_dir, args.hub_model_id, args.hub_token, args.hub_private_repo)
        say(f"pushed to the Hub as {repo_id}")


def write_model_card(output_dir: str, *, model_description: str, dataset: str | None, arguments: dict,
                     metrics: dict, sample_images: list[str], tags: list[str], figures: list[str] = (),
                     trust_remote_code: bool = False, load_from: str | None = None) -> str:
    """README.md with hub metadata (library_name diffusers), arguments, metrics and sample grids.

    ``load_from`` is what the usage snippet loads: the Hub id when pushed, else the run folder.
    """
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        library_name="diffusers",
        license="apache-2.0",
        tags=["pytorch", "diffusers", "unconditional-image-generation", *tags],
        datasets=[dataset] if dataset and not os.path.exists(dataset) else None,
    )
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in sorted(arguments.items()) if v is not None)
    metric_rows = "\n".join(f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |"
                            for k, v in metrics.items())
    pictures = "\n\n".join(f"![{os.path.basename(p)}]({p})" for p in sample_images)
    curves = "".join(f"\n\n![{os.path.basename(p)}]({p})" for p in figures)
    remote = ", trust_remote_code=True" if trust_remote_code else ""
    content = f"""---
{data.to_yaml()}
---

# {os.path.basename(os.path.abspath(output_dir))}

{model_description}

## Usage

```python
from diffusers import DiffusionPipeline

pipeline = DiffusionPipeline.from_pretrained("{load_from or output_dir}"{remote})
images = pipeline(batch_size=16).images
```

## Samples

{pictures or "(none yet)"}

## Metrics{curves}

| metric | value |
|---|---|
{metric_rows}

## Training arguments

| argument | value |
|---|---|
{rows}
"""
    path = os.path.join(output_dir, "README.md")
    ModelCard(content).save(path)
    return path


def push_to_hub(output_dir: str, repo_id: str | None, token: str | None, private: bool = False,
                commit_message: str = "Upload pipeline") -> str:
    """create_repo + upload_folder of the pipeline folder (no checkpoints, no logs); returns the repo id."""
    from huggingface_hub import create_repo, upload_folder

    repo_id = repo_id or os.path.basename(os.path.abspath(output_dir))
    try:
        repo = create_repo(repo_id, token=token, private=private, exist_ok=True)
        point_card_at(output_dir, repo.repo_id)
        upload_folder(repo_id=repo.repo_id, folder_path=output_dir, token=token, commit_message=commit_message,
                      ignore_patterns=HUB_IGNORE_PATTERNS)
    except Exception as exc:
        raise UserError(
            f"could not push {output_dir} to the Hub as {repo_id!r} ({type(exc).__name__}: {exc}). "
            "The trained pipeline is safe in the output folder; retry with your network and token "
            "(HF_TOKEN or --hub_token)."
        ) from exc
    return repo.repo_id


def point_card_at(output_dir: str, repo_id: str) -> None:
    """Make the model card's usage snippet load ``repo_id`` (known only once the repo exists)."""
    import re

    card = os.path.join(output_dir, "README.md")
    if os.path.exists(card):
        with open(card) as f:
            text = f.read()
        with open(card, "w") as f:
            f.write(re.sub(r'from_pretrained\("[^"]*"', f'from_pretrained("{repo_id}"', text))
