"""Plant known bugs one at a time and check that the tests guarding each claim catch them.

    python tools/mutations.py             # every mutation: caught / survived / stale
    python tools/mutations.py --list      # names and claims only
    python tools/mutations.py --stale     # only the mutations whose text is gone (seconds)
    python tools/mutations.py --only step-noise-ignores-step lr-stepped-per-micro-batch

Each mutation is a text substitution in one source file plus the tests that should fail once it
is applied. The tree is copied to a temporary folder first (tracked and untracked, not ignored,
files), so the working tree is never touched; the mutated file is restored after each run.
"caught" means pytest reported failing tests (exit 1); an import error or collection error is
reported as "error", not as caught. A mutation whose text is no longer found is "stale": update
it when the code moves (docs/claims.md explains the list).

Not part of the default test run: it runs a few tests per mutation (minutes in all).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    claim: str
    path: str
    edits: tuple[tuple[str, str], ...]  # (old, new): each old must occur exactly once
    tests: tuple[str, ...]


def m(name, claim, path, edits, tests):
    return Mutation(name, claim, path, tuple(edits), tuple(tests))


CLAIMS = "tests/test_claims.py"
TRAINER = "tests/test_trainer.py"
CHECKPOINTS = "tests/test_checkpoints.py"
CONFIG = "tests/test_config.py"
BASELINES = "tests/test_baselines.py"
CONVENTIONS = "tests/test_pipeline_conventions.py"
SCORING = "tests/test_training_scores.py"

MUTATIONS = [
    m("step-noise-ignores-step", "noise, timesteps and flips are seeded by (seed, step, micro-batch, process)",
      "smallgen/trainer.py",
      [("self.args.seed, step, micro, process)", "self.args.seed, 0, micro, process)")],
      [f"{CLAIMS}::test_every_step_draws_fresh_noise"]),
    m("step-noise-ignores-step-baselines", "the same, for the baselines", "smallgen/trainer.py",
      [("self.args.seed, step, micro, process)",
        "self.args.seed, step if self.objective.name == 'ddpm' else 0, micro, process)")],
      [f"{CLAIMS}::test_every_step_draws_fresh_noise"]),
    m("lr-stepped-per-micro-batch", "the lr schedule counts optimizer steps", "smallgen/trainer.py",
      [("            micro_batches.append(MicroBatch(self.feeder.augment(images, generator), generator, labels))\n",
        "            micro_batches.append(MicroBatch(self.feeder.augment(images, generator), generator, labels))\n"
        "            [s.step() for s in self.objective.lr_schedulers.values()]\n")],
      [f"{CLAIMS}::test_lr_schedule_counts_optimizer_steps"]),
    m("validation-images-flipped", "validation loss is measured on the validation images as they are",
      "smallgen/trainer.py",
      [("            clean = uint8_to_model_range(images[start:start + batch].to(device))\n",
        "            clean = __import__('smallgen.data', fromlist=['_']).random_hflip(\n"
        "                uint8_to_model_range(images[start:start + batch].to(device)))\n")],
      [f"{CLAIMS}::test_validation_loss_uses_the_validation_images_as_they_are"]),
    m("cache-key-without-resolution", "reference features cached by dataset, split, resolution, count, weights",
      "smallgen/reference.py", [("-{resolution}px", "")],
      [f"{CLAIMS}::test_reference_cache_key_names_dataset_split_resolution_count_and_seed"]),
    m("cache-name-without-weights", "the cache name includes the Inception weights", "smallgen/scores.py",
      [('f"{cache_name}-{weights.tag}.safetensors"', 'f"{cache_name}.safetensors"')],
      [f"{CLAIMS}::test_reference_features_are_cached_once_per_weights_as_safetensors"]),
    m("reference-cache-never-read", "a reference's features are extracted once, then read from the cache",
      "smallgen/scores.py", [("    if os.path.isfile(path):\n", "    if False:\n")],
      [f"{CLAIMS}::test_reference_features_are_cached_once_per_weights_as_safetensors",
       "tests/test_evaluation.py::test_fid_and_kid_equal_torch_fidelity_on_image_folders"]),
    m("checkpoint-written-in-place", "a kill during a save never leaves a broken latest checkpoint",
      "smallgen/checkpoints.py",
      [("    tmp = Path(output_dir) / f\"{CHECKPOINT_PREFIX}{step}.tmp\"\n", "    tmp = final\n"),
       ("            if final.exists():\n                shutil.rmtree(final)\n            os.replace(tmp, final)\n", "")],
      [f"{CLAIMS}::test_a_failed_save_never_leaves_a_checkpoint_folder",
       f"{CLAIMS}::test_a_kill_during_a_save_leaves_the_previous_checkpoint_latest"]),
    m("no-finite-check-before-checkpoint", "a NaN never reaches a checkpoint", "smallgen/trainer.py",
      [('        """A checkpoint of this step, its weights checked finite first."""\n        self.check_weights_finite()\n',
        '        """A checkpoint of this step, its weights checked finite first."""\n')],
      [f"{CLAIMS}::test_no_nan_reaches_a_checkpoint_between_logging_steps",
       f"{CLAIMS}::test_an_inf_gradient_at_a_checkpoint_step_is_never_saved"]),
    m("baselines-nan-stop-disabled", "a NaN/inf stops the run, for every model type", "smallgen/trainer.py",
      [("if not math.isfinite(v)}", "if not math.isfinite(v) and self.objective.name == 'ddpm'}"),
       ("        if not self.objective.weights_finite():",
        "        if not self.objective.weights_finite() and self.objective.name == 'ddpm':")],
      [f"{CLAIMS}::test_baselines_stop_on_divergence"]),
    m("ema-not-exported", "the exported weights are the EMA weights (--use_ema)", "smallgen/objectives/unet_base.py",
      [("            self.ema.copy_to(model.parameters())\n", "            pass\n")],
      [f"{TRAINER}::test_tiny_run_writes_a_loadable_pipeline"]),
    m("ema-not-checkpointed", "exact resume includes the EMA", "smallgen/objectives/unet_base.py",
      [('        return {**({} if self.ema is None else {"ema": self.ema}),', "        return {**{},")],
      [f"{CHECKPOINTS}::test_resume_is_exact"]),
    m("ema-warm-up-flags-ignored", "--ema_inv_gamma / --ema_power set the EMA warm-up", "smallgen/objectives/unet_base.py",
      [("inv_gamma=args.ema_inv_gamma, power=args.ema_power, ", "")],
      [f"{TRAINER}::test_the_ema_warm_up_follows_its_flags"]),
    m("dropout-not-reseeded", "dropout resumes exactly (the global RNG is reseeded every step)",
      "smallgen/trainer.py",
      [("        torch.manual_seed(derived_seed(self.args.seed, step, -1, process))  # dropout\n", "")],
      [f"{CHECKPOINTS}::test_resume_is_exact"]),
    m("data-order-ignores-epoch", "data order is a pure function of (seed, epoch)", "smallgen/data.py",
      [("manual_seed(self.seed * 1_000_003 + epoch)", "manual_seed(self.seed * 1_000_003)")],
      ["tests/test_data.py::test_shuffled_index_batches_are_deterministic_and_sharded"]),
    m("processes-take-the-same-shard", "each process takes a disjoint share of the same global batch",
      "smallgen/data.py", [("yield chunk[self.process_index::self.num_processes]", "yield chunk[0::self.num_processes]")],
      ["tests/test_data.py::test_shuffled_index_batches_are_deterministic_and_sharded",
       f"{TRAINER}::test_two_processes_share_each_global_batch"]),
    m("token-written-down", "the hub token is never written to disk", "smallgen/config.py",
      [('values.pop("hub_token")', 'values.get("hub_token")')],
      [f"{TRAINER}::test_tiny_run_writes_a_loadable_pipeline"]),
    m("output-dir-overwritten", "an existing --output_dir is not overwritten without --overwrite_output_dir",
      "smallgen/checkpoints.py", [("and not resuming and not overwrite:", "and False:")],
      [f"{CHECKPOINTS}::test_existing_output_dir_is_not_overwritten"]),
    m("output-dir-cleared-before-checks", "a bad argument leaves the old run folder byte-identical",
      "smallgen/trainer.py",
      [("    objective_cls.check_arguments(data_args, model_args, args)  # config errors first, checked once\n",
        "    prepare_output_dir(args.output_dir, args.logging_dir, resuming, args.overwrite_output_dir)\n"
        "    objective_cls.check_arguments(data_args, model_args, args)  # config errors first, checked once\n")],
      [f"{CHECKPOINTS}::test_bad_arguments_leave_the_old_run_untouched"]),
    m("resume-steps-past-the-end", "resuming a finished run does no step and writes nothing", "smallgen/trainer.py",
      [("        if self.resume_path is not None and self.global_step >= self.max_train_steps:\n            return None\n",
        "")],
      [f"{CHECKPOINTS}::test_resuming_a_finished_run_changes_nothing"]),
    m("resume-ignores-checkpoint", "after kill -9, resuming from the latest checkpoint ends where a straight run does",
      "smallgen/checkpoints.py",
      [("            accelerator.unwrap_model(network).load_state_dict(load_file(str(path / f\"{name}.safetensors\"), "
        "device))\n", "            pass\n")],
      [f"{CHECKPOINTS}::test_exact_resume_after_kill_9"]),
    m("signals-not-handled", "SIGTERM/SIGINT finish the step, write a checkpoint and exit 128 + signal",
      "smallgen/processes.py", [("signal.signal(s, self.on_signal)", "signal.getsignal(s)")],
      ["tests/test_faults.py::test_a_signal_finishes_the_step_saves_and_exits"]),
    m("second-signal-waits", "a second signal during that save exits at once", "smallgen/processes.py",
      [("        if self.signum is not None:\n            os._exit(128 + signum)\n",
        "        if self.signum is not None:\n            return\n")],
      ["tests/test_faults.py::test_a_second_signal_during_the_save_exits_at_once"]),
    m("flag-without-help", "--help is a manual: every flag has a help text", "smallgen/config.py",
      [('flag(1e-4, "Peak learning rate (after warm-up).", group="optimisation", above=0)',
        'flag(1e-4, "", group="optimisation", above=0)')],
      [f"{CONFIG}::test_help_is_a_manual"]),
    m("condition-dropout-ignored", "--condition_dropout drops labels (from the step's seeded generator)",
      "smallgen/objectives/conditional.py",
      [("        if self.model_args.condition_dropout > 0:", "        if False:")],
      ["tests/test_conditional.py::test_resume_is_exact_with_condition_dropout"]),
    m("guidance-formula-wrong", "eps = eps_uncond + w (eps_cond - eps_uncond)", "pipelines/pipeline_conditional.py",
      [("    return unconditional_prediction + guidance_scale * (conditional - unconditional_prediction)",
        "    return conditional + guidance_scale * (conditional - unconditional_prediction)")],
      ["tests/test_conditional.py::test_guidance_one_is_the_conditional_model_and_zero_the_unconditional"]),
    m("guidance-one-not-exact", "guidance 1 is exactly the conditional model", "pipelines/pipeline_conditional.py",
      [("    if guidance_scale == 1:\n        return unet(sample, timestep, class_labels=condition).sample\n", "")],
      ["tests/test_conditional.py::test_guidance_one_is_the_conditional_model_and_zero_the_unconditional"]),
    m("label-embedding-not-trained", "the label embedding is trained with the UNet",
      "smallgen/objectives/conditional.py",
      [('        return super().trained_parameters() + list(self.networks["label_embedding"].parameters())',
        "        return super().trained_parameters()")],
      ["tests/test_conditional.py::test_context_vectors_train_resume_and_export"]),
    m("sample-noise-per-batch", "image i depends only on (seed, i), whatever the batch size", "smallgen/seeding.py",
      [("    return [torch.Generator(device).manual_seed(derived_seed(seed, i)) for i in indices]",
        "    indices = list(indices)\n"
        "    return [torch.Generator(device).manual_seed(derived_seed(seed, indices[0]))] * len(indices)")],
      ["tests/test_sampling.py::test_images_do_not_depend_on_the_batch_size"]),
    m("models-import-smallgen", "models/ imports nothing from smallgen/", "models/unet.py",
      [("from pathlib import Path\n", "from pathlib import Path\n\nfrom smallgen.errors import ConfigError  # noqa: F401\n")],
      ["tests/test_structure.py::test_networks_and_math_import_no_plumbing"]),
    m("import-cycle", "no import cycles in models/, pipelines/, smallgen/", "smallgen/files.py",
      [("def read_json(", "def _cycle():\n    from smallgen.checkpoints import list_checkpoints  # noqa: F401\n\n\n"
                          "def read_json(")],
      ["tests/test_structure.py::test_no_import_cycles"]),
    m("budget-timing-not-undone", "the budget's timing steps leave no trace", "smallgen/trainer.py",
      [("        budget.restore_state(self.objective, accelerator, saved)\n", "")],
      ["tests/test_budget.py::test_a_time_budget_equals_its_step_count_given_directly"]),
    m("plan-from-own-clock", "every process follows one plan, made from timings every process agrees on",
      "smallgen/trainer.py",
      [("self.validation_seconds = slowest(accelerator, time.perf_counter() - start)",
        "self.validation_seconds = time.perf_counter() - start"),
       ("        return shared_plan(self.accelerator, plan)\n", "        return plan\n")],
      ["tests/test_processes.py::test_processes_that_time_validation_differently_follow_one_plan"]),
    m("plan-not-stored", "the plan is stored in each checkpoint", "smallgen/trainer.py",
      [(' "plan": self.plan.as_dict(),', "")],
      ["tests/test_processes.py::test_processes_that_time_validation_differently_follow_one_plan"]),
    m("plan-retimed-on-resume", "a resumed run follows the plan stored in its checkpoint", "smallgen/trainer.py",
      [('self.plan = self.make_plan(state.get("plan"))', "self.plan = self.make_plan(None)")],
      ["tests/test_budget.py::test_a_resumed_budget_keeps_its_planned_steps"]),
    m("collectives-wait-30-minutes", "a process left waiting in a collective gives up after --ddp_timeout",
      "smallgen/trainer.py",
      [("        kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=args.ddp_timeout))],\n", "")],
      ["tests/test_processes.py::test_a_process_left_waiting_gives_up_naming_the_step"]),
    m("flag-range-unchecked", "a value outside a flag's range is refused, naming the flag", "smallgen/arguments.py",
      [("            if ((low is not None", "            if False and ((low is not None")],
      [f"{CONFIG}::test_a_value_outside_a_flags_range_or_choices_is_refused_naming_it"]),
    m("flag-check-changes-a-value", "no check changes a value", "smallgen/objectives/baselines.py",
      [("        return self.model_args.latent_dim or self.default_latent_dim",
        "        self.model_args.latent_dim = self.model_args.latent_dim or self.default_latent_dim\n"
        "        return self.model_args.latent_dim")],
      [f"{CONFIG}::test_every_flag_is_declared_one_way_and_no_check_changes_a_value"]),
    m("evaluate-flag-of-another-type-accepted", "an evaluate_fid flag of another model type's pipelines is refused",
      "smallgen/objectives/__init__.py",
      [("        if changed and (objective is None or part not in objective.evaluation_arguments):",
        "        if False:")],
      ["tests/test_evaluation.py::test_a_model_types_own_evaluate_flag_is_refused_for_other_pipelines"]),
    m("pipeline-batch-size-unchecked", "every pipeline answers batch_size < 1 with a ValueError naming it",
      "pipelines/portable_pipeline.py",
      [("or not isinstance(batch_size, int) or batch_size < 1:", "and False:")],
      [f"{CONVENTIONS}::test_out_of_range_inputs_raise_a_value_error_naming_the_argument"]),
    m("pipeline-zero-steps-accepted", "num_inference_steps < 1 is refused, naming it", "pipelines/portable_pipeline.py",
      [("or not isinstance(num_inference_steps, int) or num_inference_steps < 1):",
        "or not isinstance(num_inference_steps, int) or num_inference_steps < 0):")],
      [f"{CONVENTIONS}::test_out_of_range_inputs_raise_a_value_error_naming_the_argument"]),
    m("pipeline-generator-list-unchecked", "a generator list whose length is not the batch's is refused",
      "pipelines/portable_pipeline.py",
      [("if isinstance(generator, list) and len(generator) != batch_size:", "if False:")],
      [f"{CONVENTIONS}::test_out_of_range_inputs_raise_a_value_error_naming_the_argument"]),
    m("pipeline-guidance-not-finite", "a non-finite guidance_scale is refused", "pipelines/portable_pipeline.py",
      [("and math.isfinite(guidance_scale)):", "and True):")],
      [f"{CONVENTIONS}::test_out_of_range_inputs_raise_a_value_error_naming_the_argument"]),
    m("labels-not-flattened", "labels are taken as DiT takes them: one label, a list, nested lists flattened",
      "pipelines/pipeline_conditional.py",
      [("    return [one for label in labels for one in _flattened(label)]", "    return list(labels)")],
      [f"{CONVENTIONS}::test_labels_are_taken_the_ways_dits_pipeline_takes_them"]),
    m("random-flip-never-flips", "--random_flip mirrors about half the training images left-right", "smallgen/data.py",
      [("return random_hflip(images, generator) if self.random_flip else images", "return images")],
      ["tests/test_flags.py::test_random_flip_mirrors_about_half_the_training_images_left_right"]),
    m("unet-weight-decay-dropped", "--adam_weight_decay reaches the UNets' AdamW", "smallgen/objectives/unet_base.py",
      [("weight_decay=args.adam_weight_decay,", "weight_decay=0.0,")],
      ["tests/test_flags.py::test_adam_weight_decay_reaches_every_optimizer[ddpm]"]),
    m("baseline-weight-decay-dropped", "--adam_weight_decay reaches the baselines' Adam", "smallgen/objectives/base.py",
      [("weight_decay=args.adam_weight_decay)", "weight_decay=0.0)")],
      ["tests/test_flags.py::test_adam_weight_decay_reaches_every_optimizer[dcgan]"]),
    m("unet-clipping-without-effect", "--max_grad_norm clips the UNets' gradients", "smallgen/objectives/unet_base.py",
      [("accelerator.clip_grad_norm_(self.trained_parameters(), args.max_grad_norm)",
        "accelerator.clip_grad_norm_(self.trained_parameters(), 1e9)")],
      ["tests/test_flags.py::test_gradient_clipping_bounds_the_first_update[ddpm]"]),
    m("baseline-clipping-without-effect", "--max_grad_norm clips the baselines' gradients",
      "smallgen/objectives/baselines.py",
      [("self.accelerator.clip_grad_norm_(network.parameters(), self.train_args.max_grad_norm)",
        "self.accelerator.clip_grad_norm_(network.parameters(), 1e9)")],
      ["tests/test_flags.py::test_gradient_clipping_bounds_the_first_update[vae]"]),
    m("fid-seed-ignored", "evaluate_fid --seed draws the samples", "smallgen/sample_sources.py",
      [("draw_images(pipeline, count, args.seed,", "draw_images(pipeline, count, 0,")],
      ["tests/test_evaluation.py::test_evaluate_fids_seed_and_eta_reach_the_samples"]),
    m("fid-processes-exit-while-scoring", "evaluate_fid's processes wait for the scores, then leave the group",
      "smallgen/evaluation.py", [("        leave_process_group()\n", "")],
      ["tests/test_evaluation.py::test_every_process_waits_for_the_scores_then_leaves_the_group"]),
    m("fid-inception-weights-ignored", "evaluate_fid --inception_weights are the weights scored with",
      "smallgen/evaluation.py", [("resolve_inception_weights(args.inception_weights, cache)",
                                  "resolve_inception_weights(None, cache)")],
      ["tests/test_evaluation.py::test_inception_weights_given_are_the_ones_scored_with"]),
    m("fid-batch-size-ignored", "evaluate_fid --batch_size is what each pipeline call draws", "smallgen/sample_sources.py",
      [("args.batch_size, first_index=first", "64, first_index=first")],
      ["tests/test_evaluation.py::test_batch_size_is_what_each_pipeline_call_draws"]),
    m("fid-device-ignored", "evaluate_fid --device chooses where the evaluation runs", "smallgen/sample_sources.py",
      [("    if args.device:\n", "    if False:\n")],
      ["tests/test_evaluation.py::test_device_chooses_where_the_evaluation_runs"]),
    m("fid-trust-remote-code-ignored", "evaluate_fid --trust_remote_code lets a folder's own pipeline code load",
      "smallgen/sample_sources.py", [("trust_remote_code=trust_remote_code)", "trust_remote_code=False)")],
      ["tests/test_evaluation.py::test_trust_remote_code_lets_a_folder_with_its_own_pipeline_code_load"]),
    m("fid-eta-dropped", "evaluate_fid --eta reaches the DDIM pipeline", "smallgen/sample_sources.py",
      [('options["eta"] = args.eta', 'options["eta"] = 0.0')],
      ["tests/test_evaluation.py::test_evaluate_fids_seed_and_eta_reach_the_samples"]),
    m("guidance-sweep-dropped", "each --guidance_scale of the sweep reaches the conditional pipeline",
      "smallgen/objectives/conditional.py",
      [('"guidance_scale": scale}', "}")],
      ["tests/test_conditional.py::test_the_guidance_sweep_reaches_the_pipeline"]),
    m("budget-retimed-on-resume", "a resumed budget run keeps its planned steps", "smallgen/trainer.py",
      [('self.max_train_steps = state.get("max_train_steps") or self.time_the_budget()',
        "self.max_train_steps = self.time_the_budget()")],
      ["tests/test_budget.py::test_a_resumed_budget_keeps_its_planned_steps"]),
    m("cpu-threads-left-at-one", "accelerate launch trains on every CPU core", "smallgen/trainer.py",
      [("    use_cpu_cores(accelerator, args.cpu_threads)\n", "")],
      ["tests/test_budget.py::test_accelerate_launch_trains_on_the_cores_left_free"]),
    m("edm-input-not-scaled", "EDMPipeline drives the scheduler as diffusers documents (scaled input)",
      "pipelines/pipeline_edm.py",
      [("            model_input = self.scheduler.scale_model_input(sample, t).to(self.unet.dtype)",
        "            model_input = sample.to(self.unet.dtype)")],
      ["tests/test_edm.py::test_sampling_with_diffusers_edm_euler_is_karras_euler"]),
    m("edm-noise-not-scaled", "EDMPipeline starts from noise of the scheduler's scale", "pipelines/pipeline_edm.py",
      [("        sample = sample * self.scheduler.init_noise_sigma\n", "")],
      ["tests/test_edm.py::test_sampling_with_diffusers_edm_euler_is_karras_euler"]),
    m("ddpm-offers-euler", "evaluate_fid offers a DDPMPipeline only the samplers diffusers' pipelines run right",
      "smallgen/objectives/diffusion.py",
      [('    "dpmsolver++3m": Sampler(*DDPM_SCHEDULERS["dpmsolver++3m"], "diffusers:DDPMPipeline"),\n',
        '    "dpmsolver++3m": Sampler(*DDPM_SCHEDULERS["dpmsolver++3m"], "diffusers:DDPMPipeline"),\n'
        '    "euler": Sampler(*DDPM_SCHEDULERS["euler"], "diffusers:DDPMPipeline"),\n')],
      ["tests/test_sampling.py::test_each_ddpm_sampler_through_its_pipeline_equals_diffusers_documented_loop"]),
    m("grids-bypass-the-pipeline", "sample grids are drawn by the exported pipeline with each grid's sampler",
      "smallgen/objectives/unet_base.py",
      [("        return {name: draw_images(with_sampler(pipeline, self.samplers[sampler]), num_images, seed,",
        "        return {name: draw_images(pipeline, num_images, seed,")],
      ["tests/test_sampling.py::test_grids_are_what_the_exported_pipeline_draws"]),
    m("fid-bypasses-the-sampler", "evaluate_fid samples with --scheduler's sampler through the pipeline",
      "smallgen/sample_sources.py",
      [("    return with_sampler(pipeline, sampler_of(pipeline, args.scheduler))", "    return pipeline")],
      ["tests/test_evaluation.py::test_dpmsolver_and_ddpm_samplers_run"]),
    m("edm-c-noise-wrong", "EDM preconditioning equals diffusers' EDM schedulers", "models/edm.py",
      [("return sd ** 2 / norm.pow(2), sigma * sd / norm, 1 / norm, sigma.log() / 4",
        "return sd ** 2 / norm.pow(2), sigma * sd / norm, 1 / norm, sigma.log()")],
      ["tests/test_edm.py::test_preconditioning_equals_diffusers_edm_schedulers"]),
    m("edm-loss-unweighted", "the EDM loss is weighted by lambda(sigma)", "models/edm.py",
      [("        return weight * (denoised", "        return (denoised")],
      ["tests/test_edm.py::test_the_loss_draws_noise_then_levels_and_weights_by_the_level"]),
    m("edm-noise-level-flags-ignored", "--edm_p_mean / --edm_p_std set EDM's training noise levels",
      "smallgen/objectives/edm.py",
      [("EDMLoss(p_mean=self.model_args.edm_p_mean, p_std=self.model_args.edm_p_std, sigma_data=SIGMA_DATA)",
        "EDMLoss(sigma_data=SIGMA_DATA)")],
      ["tests/test_edm.py::test_edm_noise_level_flags_reach_the_loss_and_only_edm_takes_them"]),
    m("edm-heun-corrector-dropped", "EDM Heun is Karras' Algorithm 1 (second order)", "pipelines/scheduling_edm_heun.py",
      [("(start_derivative + derivative) / 2", "derivative")],
      ["tests/test_edm.py::test_edm_heun_is_karras_algorithm_1"]),
    m("time-to-fid-first-sampler-only", "time_to_fid scores a diffusion run with each of its samplers",
      "benchmarks/time_to_fid.py",
      [("        chosen = [Scoring(sampler=sampler) for sampler in samplers]", "        chosen = [Scoring(sampler=samplers[0])]")],
      ["tests/test_time_to_fid.py::test_each_run_is_scored_with_each_of_its_samplers"]),
    m("cpu10k-scores-every-way", "the 10,000-sample protocol scores each run once, its default way",
      "benchmarks/time_to_fid.py", [("    chosen = chosen[:1] if protocol.default_scoring_only else chosen\n", "")],
      ["tests/test_time_to_fid.py::test_the_10000_sample_protocol_scores_each_run_its_default_way_once"]),
    m("cpu32-meanflow-at-the-protocols-steps", "the 32 px protocol samples MeanFlow with 1 and 2 calls",
      "benchmarks/time_to_fid.py", [("               str(scoring.steps or args.sampler_steps or protocol.sampler_steps),",
                                     "               str(args.sampler_steps or protocol.sampler_steps),")],
      ["tests/test_time_to_fid.py::test_the_32px_protocol_trains_the_seeds_families_and_scores_meanflow_at_one_and_two_calls"]),
    m("gpu-window-parts-ignore-the-tree", "each GPU window call carries its part and the working tree under 64 MiB",
      "benchmarks/gpu_suite.py",
      [("    capacities = [CALL_LIMIT - MARGIN - tree - wheel_bytes, CALL_LIMIT - MARGIN - tree]",
        "    capacities = [CALL_LIMIT - wheel_bytes, CALL_LIMIT]")],
      ["tests/test_gpu_suite.py::test_the_window_runs_every_call_on_the_cpu"]),
    m("data-floor-overlaps-the-reference", "the CPU protocol's data row scores train images the reference lacks",
      "benchmarks/time_to_fid.py",
      [("    pool = others if apart else np.arange(size)", "    pool = np.arange(size)")],
      ["tests/test_time_to_fid.py::test_the_data_row_scores_train_images_the_reference_lacks"]),
    m("lock-kept-after-a-failure", "a run that fails releases its --output_dir lock", "smallgen/trainer.py",
      [("        return trainer.run()\n    finally:\n        lock.release()\n",
        "        result = trainer.run()\n        lock.release()\n        return result\n    finally:\n        pass\n")],
      ["tests/test_faults.py::test_a_run_that_fails_releases_its_lock"]),
    m("reference-seed-ignored", "--reference_seed draws the FID reference subset", "smallgen/reference.py",
      [("reference_indices(len(dataset), args.num_reference, args.reference_seed)",
        "reference_indices(len(dataset), args.num_reference, 2020)")],
      [f"{CLAIMS}::test_the_reference_subset_is_drawn_with_reference_seed"]),
    m("min-snr-v-weight-wrong", "min-SNR weights min(SNR, gamma) / (SNR + 1) for v-prediction", "models/losses.py",
      [('"v_prediction": clipped / (snr + 1)', '"v_prediction": clipped / snr')],
      ["tests/test_schedulers.py::test_min_snr_weights_per_prediction_type"]),
    m("budget-steps-miss-lr-schedule", "a time budget's step count is what the lr schedule spans", "smallgen/trainer.py",
      [("            self.objective.make_schedules(state.get(\"plan\", {}).get(\"planned_steps\") or self.max_train_steps)\n",
        "")],
      ["tests/test_budget.py::test_the_budgeted_step_count_reaches_the_lr_schedule"]),
    m("config-names-a-model-type", "config.py, evaluation.py and export.py name no model type", "smallgen/config.py",
      [('flag(MODEL_TYPES[0], "What to train', 'flag("ddpm", "What to train')],
      ["tests/test_structure.py::test_the_plumbing_names_no_model_type"]),
    m("flow-velocity-target-wrong", "flow matching learns the velocity n - x of the straight path", "models/flow.py",
      [("(predicted - (noise - clean))", "(predicted - (clean - noise))")],
      ["tests/test_flow.py::test_the_loss_draws_noise_then_times_and_matches_the_velocity"]),
    m("flow-density-flag-ignored", "--flow_timestep_density and its parameters reach the flow loss",
      "smallgen/objectives/flow.py",
      [("FlowMatchingLoss(m.flow_timestep_density, m.flow_logit_mean, m.flow_logit_std, m.flow_mode_scale)",
        "FlowMatchingLoss()")],
      ["tests/test_flow.py::test_flow_flags_are_checked_reach_the_loss_and_only_flow_takes_them"]),
    m("flow-pipeline-skips-last-step", "the flow pipeline integrates the ODE down to t = 0", "pipelines/pipeline_flow.py",
      [("for t in self.progress_bar(self.scheduler.timesteps):", "for t in self.progress_bar(self.scheduler.timesteps[:-1]):")],
      ["tests/test_flow.py::test_sampling_is_a_written_out_euler_integration_of_the_ode"]),
    m("flow-time-not-scaled", "the flow UNet is trained at timestep 1000 t, as diffusers' flow schedulers sample it",
      "smallgen/objectives/flow.py", [("network(self.memory_format(noisy), t * TIMESTEP_SCALE)", "network(self.memory_format(noisy), t)")],
      ["tests/test_flow.py::test_the_unet_sees_timestep_1000_t_in_training_as_the_schedulers_sample"]),
    m("meanflow-tangent-on-r", "MeanFlow's du/dt is the total derivative along the path: tangents v on z_t, 1 on t, 0 on r",
      "models/meanflow.py", [("torch.zeros_like(r[apart])", "torch.ones_like(r[apart])")],
      ["tests/test_meanflow.py::test_the_target_is_the_meanflow_identity_with_a_jvp_equal_to_a_finite_difference"]),
    m("meanflow-target-sign", "MeanFlow's target is u_tgt = v - (t - r) du/dt", "models/meanflow.py",
      [("return u, velocity - _column(", "return u, velocity + _column(")],
      ["tests/test_meanflow.py::test_the_target_is_the_meanflow_identity_with_a_jvp_equal_to_a_finite_difference"]),
    m("meanflow-jvp-on-fused-attention", "the JVP runs through the UNet's attention (math kernel: the fused ones lack forward AD)",
      "models/meanflow.py", [("    with sdpa_kernel(SDPBackend.MATH):\n", "    if True:\n")],
      ["tests/test_meanflow.py::test_the_target_is_the_meanflow_identity_with_a_jvp_equal_to_a_finite_difference"]),
    m("meanflow-ratio-inverted", "--meanflow_ratio is the fraction of (r, t) pairs with r < t", "models/meanflow.py",
      [("< self.ratio", ">= self.ratio")], ["tests/test_meanflow.py::test_times_are_sorted_logit_normal_pairs_with_the_ratio_apart"]),
    m("meanflow-weighting-dropped", "MeanFlow's gradient is the adaptively weighted error's", "models/meanflow.py",
      [("weighted = error / (error.detach() + WEIGHTING_EPS).pow(self.weighting_power)", "weighted = error")],
      ["tests/test_meanflow.py::test_the_value_is_the_error_and_the_gradient_the_adaptively_weighted_one"]),
    m("meanflow-logs-the-weighted-value", "MeanFlow's logged loss is the plain error (the weighted one reads ~1)",
      "models/meanflow.py", [("return weighted - weighted.detach() + error.detach() / images[0].numel()", "return weighted")],
      ["tests/test_meanflow.py::test_the_value_is_the_error_and_the_gradient_the_adaptively_weighted_one"]),
    m("meanflow-flags-ignored", "the --meanflow_* flags reach the loss", "smallgen/objectives/meanflow.py",
      [("MeanFlowLoss(m.meanflow_ratio, m.meanflow_logit_mean, m.meanflow_logit_std, m.meanflow_weighting_power)",
        "MeanFlowLoss()")],
      ["tests/test_meanflow.py::test_meanflow_flags_are_checked_reach_the_loss_and_only_meanflow_takes_them"]),
    m("meanflow-pipeline-step-to-t", "a MeanFlowPipeline step from t to r is z_t - (t - r) u(z_t, r, t)",
      "pipelines/pipeline_meanflow.py", [("self.average_velocity(sample, times[i + 1], times[i])",
                                           "self.average_velocity(sample, times[i], times[i])")],
      ["tests/test_meanflow.py::test_one_step_is_noise_minus_u_and_two_steps_halve_the_interval"]),
    m("meanflow-class-embedding-not-cast", "a float16 or float64 MeanFlowPipeline samples (its class embedding gets "
      "float32)", "pipelines/pipeline_meanflow.py",
      [("with _inputs_cast_to_weights(self.unet.class_embedding):", "with contextlib.nullcontext():")],
      [f"{CONVENTIONS}::test_dtype_round_trip[MeanFlowPipeline]",
       f"{CONVENTIONS}::test_float64_samples_as_float32_does[MeanFlowPipeline]"]),
    m("cm-middle-level-ignored", "evaluate_fid --cm_middle_level i scores 2 steps through level i",
      "smallgen/objectives/consistency.py",
      [('return [{"timesteps": [level, 0]} for level in', 'return [{} for level in')],
      ["tests/test_consistency.py::test_evaluate_fid_sweeps_the_2_step_middle_level"]),
    m("gan-evaluation-settings-without-cls", "evaluate_fid scores a GAN pipeline with its --gan_batchnorm mode",
      "smallgen/objectives/baselines.py",
      [("def gan_evaluation_settings(cls, pipeline, args)", "def gan_evaluation_settings(pipeline, args)")],
      ["tests/test_evaluation.py::test_a_gan_pipeline_is_scored_with_its_batchnorm_mode"]),
    m("few-step-tuning-not-from-teacher", "sampling_cost.py tunes every consistency run of a table from the 5-minute teacher",
      "benchmarks/sampling_cost.py",
      [('if recipe.startswith("quickstart-consistency") else []', 'if recipe == "quickstart-consistency" else []')],
      ["tests/test_sampling_cost.py::test_every_consistency_run_is_tuned_from_the_teacher"]),
    m("gan-ema-not-exported", "dcgan --use_ema exports the EMA generator", "smallgen/objectives/baselines.py",
      [("        self.ema.copy_to(averaged.parameters())\n", "")],
      ["tests/test_baselines.py::test_dcgan_ema_is_what_the_pipeline_samples"]),
    # diffusers' pipeline conventions (tests/test_pipeline_conventions.py), one planted bug each
    m("component-code-not-saved", "a saved pipeline carries the code of its components that are ours",
      "pipelines/portable_pipeline.py",
      [("            if component is not None and not _from_known_library(type(component)):",
        "            if False:")],
      [f"{CONVENTIONS}::test_diffusers_loader_in_a_fresh_interpreter_with_and_without_this_project"]),
    m("pipeline-code-not-named", "model_index.json names the pipeline's code as diffusers expects",
      "pipelines/portable_pipeline.py",
      [('        index["_class_name"] = [_copy_code(type(self), save_directory), type(self).__name__]\n',
        '        _copy_code(type(self), save_directory)\n')],
      [f"{CONVENTIONS}::test_diffusers_loader_in_a_fresh_interpreter_with_and_without_this_project"]),
    m("class-loader-runs-folder-code", "our from_pretrained loads into the installed classes (no trust_remote_code)",
      "pipelines/portable_pipeline.py",
      [("                config[name] = cls._installed_component(entry) or entry\n", "                pass\n")],
      [f"{CONVENTIONS}::test_save_load_round_trip_with_the_class_loader"]),
    m("class-loader-drops-keywords", "our from_pretrained takes every keyword diffusers' does",
      "pipelines/portable_pipeline.py",
      [("        return super().from_pretrained(folder, **kwargs)", "        return super().from_pretrained(folder)")],
      [f"{CONVENTIONS}::test_from_pretrained_takes_diffusers_keywords"]),
    m("hub-id-not-fetched", "our from_pretrained loads a Hub id (files only) into the installed classes",
      "pipelines/portable_pipeline.py",
      [("        if not os.path.isdir(folder):\n            from huggingface_hub import snapshot_download\n",
        "        if False:\n            from huggingface_hub import snapshot_download\n")],
      [f"{CONVENTIONS}::test_a_hub_id_loads_into_the_installed_classes_from_a_server"]),
    m("no-cpu-offload-sequence", "model_cpu_offload_seq names every network", "pipelines/pipeline_flow.py",
      [('    model_cpu_offload_seq = "unet"\n', "")],
      [f"{CONVENTIONS}::test_model_cpu_offload_names_every_network_and_samples"]),
    m("offload-sequence-misses-a-network", "model_cpu_offload_seq names every network",
      "pipelines/pipeline_conditional.py",
      [('    model_cpu_offload_seq = "label_embedding->unet"', '    model_cpu_offload_seq = "unet"')],
      [f"{CONVENTIONS}::test_model_cpu_offload_names_every_network_and_samples"]),
    m("from-pipe-drops-subclasses", "from_pipe keeps a network annotated by its base class",
      "pipelines/portable_pipeline.py",
      [("sub for base in bases for sub in _with_subclasses(base)", "sub for base in bases for sub in [base]")],
      [f"{CONVENTIONS}::test_from_pipe_builds_the_same_pipeline_and_swaps_a_component"]),
    m("call-swallows-unknown-keywords", "an unknown keyword raises TypeError", "pipelines/pipeline_baselines.py",
      [('                 output_type: str = "pil", return_dict: bool = True):',
        '                 output_type: str = "pil", return_dict: bool = True, **kwargs):')],
      [f"{CONVENTIONS}::test_unknown_keywords_raise_type_error"]),
    m("non-square-sizes-squared", "a UNet with sample_size (h, w) samples h x w images", "pipelines/portable_pipeline.py",
      [("        height, width = (size, size) if isinstance(size, int) else tuple(size)",
        "        height = width = size if isinstance(size, int) else size[0]")],
      [f"{CONVENTIONS}::test_non_square_sample_sizes"]),
    m("return-dict-ignored", "return_dict=False returns a tuple", "pipelines/portable_pipeline.py",
      [("        if not return_dict:\n            return (images,)\n", "")],
      [f"{CONVENTIONS}::test_output_types_agree_and_return_dict_false_is_a_tuple"]),
    m("pt-output-left-in-model-range", "output_type 'pt' is in [0, 1] like 'np'", "pipelines/portable_pipeline.py",
      [("        images = (images.float() / 2 + 0.5).clamp(0, 1)\n        if output_type != \"pt\":",
        "        if output_type != \"pt\":\n            images = (images.float() / 2 + 0.5).clamp(0, 1)")],
      [f"{CONVENTIONS}::test_output_types_agree_and_return_dict_false_is_a_tuple"]),
    m("generator-list-collapsed", "a list of generators gives image i its own", "pipelines/pipeline_edm.py",
      [("        sample = randn_tensor(self.image_shape(batch_size, self.unet.config), generator=generator,",
        "        sample = randn_tensor(self.image_shape(batch_size, self.unet.config),\n"
        "                              generator=generator[0] if isinstance(generator, list) else generator,")],
      [f"{CONVENTIONS}::test_a_list_of_generators_gives_each_image_its_own"]),
    m("progress-bar-bypassed", "the step loop shows diffusers' progress bar", "pipelines/pipeline_flow.py",
      [("for t in self.progress_bar(self.scheduler.timesteps):", "for t in self.scheduler.timesteps:")],
      [f"{CONVENTIONS}::test_progress_bar_shows_the_steps_and_can_be_silenced"]),
    m("network-dtype-not-followed", "a float16 pipeline feeds its networks float16", "pipelines/pipeline_conditional.py",
      [("            model_input = self.scheduler.scale_model_input(sample, t).to(self.unet.dtype)",
        "            model_input = self.scheduler.scale_model_input(sample, t)")],
      [f"{CONVENTIONS}::test_dtype_round_trip"]),
    m("class-names-outside-the-config", "class names live in the label embedding's config",
      "pipelines/pipeline_conditional.py",
      [("        return list(self.label_embedding.config.class_names)",
        "        return getattr(self, \"names\", [str(i) for i in range(len(self.label_embedding.config.class_names))])")],
      [f"{CONVENTIONS}::test_components_rebuild_an_equal_pipeline"]),
    m("torchvision-mismatch-not-caught", "a torchvision built for another torch is one clear line",
      "smallgen/environment.py", [("    except RuntimeError as exc:", "    except ImportError as exc:")],
      ["tests/test_bad_inputs.py::test_a_torchvision_built_for_another_torch_is_one_line"]),
    m("grids-ignore-the-budget", "with a time budget, sample grids take about a tenth of it", "smallgen/budget.py",
      [("    if grid_images is None and round_seconds(images) > GRID_SHARE * seconds:", "    if False:")],
      ["tests/test_budget.py::test_off_the_clock_work_keeps_to_its_share_of_a_budget_and_flags_win"]),
    m("validation-ignores-the-budget", "with a time budget, validation takes about a twentieth of it",
      "smallgen/budget.py",
      [("    validate_every = 1 if validations >= num_epochs else", "    validate_every = 1 if True else")],
      ["tests/test_budget.py::test_off_the_clock_work_keeps_to_its_share_of_a_budget_and_flags_win"]),
    m("ddpm-grid-on-the-cpu", "on the CPU no DDPM grid unless asked for", "smallgen/objectives/diffusion.py",
      [('        if ddpm_steps is None and self.accelerator.device.type != "cpu":',
        "        if ddpm_steps is None:")],
      ["tests/test_budget.py::test_a_cpu_run_says_what_it_spends_off_the_clock_and_keeps_to_it"]),
    m("busy-cores-ignored", "on the CPU a run takes the cores other processes leave free", "smallgen/environment.py",
      [("    threads = requested or max(1, (cores - round(busy)) // local_processes)",
        "    threads = requested or max(1, cores // local_processes)")],
      ["tests/test_budget.py::test_accelerate_launch_trains_on_the_cores_left_free"]),
    m("busy-reading-ignores-others", "a process kept busy elsewhere is seen", "smallgen/environment.py",
      [("            busy += process.cpu_percent(None)", "            busy += 0 * process.cpu_percent(None)")],
      ["tests/test_budget.py::test_a_process_kept_busy_elsewhere_is_seen"]),
    m("fid-shares-overlap", "each process draws its own share of the image indices", "smallgen/sample_sources.py",
      [("    first, count = rank * share, max(0, min(share, args.num_samples - rank * share))",
        "    first, count = 0, max(0, min(share, args.num_samples - rank * share))")],
      ["tests/test_evaluation.py::test_two_processes_draw_the_same_samples_and_score_the_same_fid"]),
    m("budget-never-replanned", "a time budget's count is re-planned from the loop's own pace", "smallgen/plan.py",
      [("return bool(self.replan_every) and global_step", "return False and global_step")],
      ["tests/test_budget.py::test_a_budget_follows_the_loops_own_pace"]),
    m("replan-lr-not-stretched", "after a re-plan the lr schedules stretch what is left of them", "smallgen/plan.py",
      [("        if self.max_train_steps == planned and self.position_micro == self.replanned_at * 10**6:\n",
        "        if True:\n")],
      ["tests/test_budget.py::test_a_budget_follows_the_loops_own_pace",
       "tests/test_budget.py::test_the_cosine_lr_ends_at_0_whatever_the_re_plans_do"]),
    m("replan-position-not-stored", "a checkpoint stores where the lr schedules stood at the last re-plan",
      "smallgen/trainer.py", [('"replanned_at",\n                                                              "position_micro")',
                              '"replanned_at")')],
      ["tests/test_budget.py::test_a_resumed_budget_goes_on_from_the_stored_replan"]),
    m("replan-pace-from-the-start", "a re-plan reads the recent pace, not the run's average", "smallgen/budget.py",
      [("pace = max(recent_seconds / max(recent_steps, 1), 1e-9)",
        "pace = max(clock_seconds / max(global_step, 1), 1e-9)")],
      ["tests/test_budget.py::test_replanned_steps_fill_what_is_left_at_the_recent_pace"]),
    m("replan-stops-before-the-schedule-ends", "a re-plan leaves at least one step: the lr schedules end at the last",
      "smallgen/budget.py", [("steps = global_step + max(1, int(", "steps = global_step + max(0, int(")],
      ["tests/test_budget.py::test_replanned_steps_fill_what_is_left_at_the_recent_pace"]),
    m("dataset-config-name-dropped", "--dataset_config_name picks the local dataset's configuration",
      "smallgen/data.py", [("builder_args = (path, args.dataset_config_name)", "builder_args = (path, None)")],
      ["tests/test_data.py::test_dataset_config_name_picks_the_configuration_for_training_and_the_reference"]),
    m("reference-config-name-dropped", "evaluate_fid's --dataset_config_name picks the reference's configuration",
      "smallgen/reference.py", [("dataset_config_name=args.dataset_config_name,", "dataset_config_name=None,")],
      ["tests/test_data.py::test_dataset_config_name_picks_the_configuration_for_training_and_the_reference"]),
    m("report-forward-images-fixed", "the report's --num_forward_images sets the forward strip's images",
      "smallgen/report.py", [("_reference_images(args, runs, args.num_forward_images)", "_reference_images(args, runs, 2)")],
      ["tests/test_report.py::test_the_strip_flags_reach_the_strips"]),
    m("report-ddpm-steps-ignored", "the report's --reverse_steps_ddpm sets the DDPM strip's steps", "smallgen/report.py",
      [("ddpm_steps = min(args.reverse_steps_ddpm or T, T)", "ddpm_steps = T")],
      ["tests/test_report.py::test_the_strip_flags_reach_the_strips"]),
    m("report-ddim-steps-ignored", "the report's --reverse_steps_ddim sets the DDIM strip's steps", "smallgen/report.py",
      [("reverse_process_frames(pipeline.unet, ddim, args.reverse_steps_ddim,",
        "reverse_process_frames(pipeline.unet, ddim, 50,")],
      ["tests/test_report.py::test_the_strip_flags_reach_the_strips"]),
    m("report-skip-reverse-ignored", "the report's --skip_reverse draws no reverse strip", "smallgen/report.py",
      [("        if not args.skip_reverse:\n", "        if True:\n")],
      ["tests/test_report.py::test_the_strip_flags_reach_the_strips"]),
    m("budget-timing-syncs-every-step", "the budget's timing syncs once a window, as the loop runs",
      "smallgen/budget.py", [("            run_step(i, i == first + count - 1)\n", "            run_step(i, True)\n")],
      ["tests/test_budget.py::test_seconds_per_step_skips_the_slow_first_steps_and_syncs_once_a_window"]),
    m("scores-every-process-draws-the-first-share", "each process draws its own share of the samples scored while "
      "training", "smallgen/training_scores.py",
      [("        first = accelerator.process_index * share\n", "        first = 0\n")],
      [f"{SCORING}::test_two_processes_each_draw_a_share_and_score_as_evaluate_fid"]),
    m("scores-num-reference-ignored", "--evaluate_num_reference sets the reference subset's size",
      "smallgen/training_scores.py", [("num_reference=args.evaluate_num_reference or args.evaluate_num_samples",
                                       "num_reference=args.evaluate_num_samples")],
      [f"{SCORING}::test_two_processes_each_draw_a_share_and_score_as_evaluate_fid"]),
    m("scores-reference-not-evaluate-fids", "scores while training use evaluate_fid.py's reference (its subset rule)",
      "smallgen/training_scores.py", [("reference_seed=2020)", "reference_seed=0)")],
      [f"{SCORING}::test_scores_while_training_equal_evaluate_fid_on_the_export"]),
    m("scores-sampler-not-the-fast-one", "scores while training sample with the model type's fast sampler",
      "smallgen/objectives/diffusion.py", [('    fast_sampler = ("ddim", 50)\n', '    fast_sampler = ("ddim", 20)\n')],
      [f"{SCORING}::test_scores_while_training_equal_evaluate_fid_on_the_export"]),
    m("scores-skip-the-last-step", "the last step is always scored",
      "smallgen/plan.py", [("(global_step % every == 0 or global_step == self.max_train_steps)",
                            "global_step % every == 0")],
      [f"{SCORING}::test_scores_while_training_equal_evaluate_fid_on_the_export"]),
    m("scores-schedule-not-stored", "a resumed run scores at the stored plan's steps",
      "smallgen/trainer.py", [('evaluate_every = (stored or {}).get("evaluate_every", 0)', "evaluate_every = 0")],
      [f"{SCORING}::test_a_resumed_run_scores_as_the_straight_one"]),
    m("scores-reference-checked-after-the-folder", "a reference that cannot be used is refused before anything "
      "is written", "smallgen/trainer.py",
      [("""    scores = None
    if args.evaluate_num_samples:  # weights and reference found here, or refused before anything is written
        from smallgen.training_scores import TrainingScores

        scores = TrainingScores(objective, accelerator, data_args, args)
""", "    scores = None\n"),
       ("            prepare_output_dir(args.output_dir, args.logging_dir, resuming, args.overwrite_output_dir)\n",
        """            prepare_output_dir(args.output_dir, args.logging_dir, resuming, args.overwrite_output_dir)
        if args.evaluate_num_samples:
            from smallgen.training_scores import TrainingScores

            trainer.scores = TrainingScores(objective, accelerator, data_args, args)
""")],
      [f"{SCORING}::test_a_reference_that_cannot_be_used_is_refused_before_anything_is_written"]),
    m("scores-budget-share-ignored", "with a budget, the default evaluations fit in 15% of it",
      "smallgen/budget.py", [("            count = max(1, int(EVALUATION_SHARE * budget_minutes * 60 / max(evaluation_seconds(), 1e-9)))\n",
                              "            pass\n")],
      [f"{SCORING}::test_the_evaluations_are_planned_like_the_grids"]),
    m("keep-best-exports-the-last", "--keep_best exports the best-scoring step's weights", "smallgen/export.py",
      [("    if best_step is None:\n        card = objective.export(args.output_dir)", "    if True:\n        card = objective.export(args.output_dir)")],
      [f"{SCORING}::test_keep_best_exports_the_best_step_and_a_resume_keeps_it"]),
    m("keep-best-not-in-checkpoint", "a resumed run keeps the best so far", "smallgen/trainer.py",
      [('                "best": self.best, **self.identity()}', "                **self.identity()}")],
      [f"{SCORING}::test_keep_best_exports_the_best_step_and_a_resume_keeps_it"]),
    m("keep-best-folder-after-the-checkpoint-kept", "a best written after the resumed checkpoint is forgotten",
      "smallgen/trainer.py", [("        self.prune_bests()  # a best written after the resumed checkpoint is forgotten\n", "")],
      [f"{SCORING}::test_keep_best_exports_the_best_step_and_a_resume_keeps_it"]),
    m("keep-best-prunes-what-checkpoints-name", "a best folder a checkpoint names is kept for its resume",
      "smallgen/trainer.py", [("remove_bests_except(self.args.output_dir, named | {self.best.get(\"step\")})",
                               "remove_bests_except(self.args.output_dir, {self.best.get(\"step\")})")],
      [f"{SCORING}::test_keep_best_exports_the_best_step_and_a_resume_keeps_it"]),
    m("budget-timing-mean-not-median", "a burst of other work during the budget's timing moves only one window",
      "smallgen/budget.py", [("    return means[TIMED_WINDOWS // 2]\n", "    return sum(means) / TIMED_WINDOWS\n")],
      ["tests/test_budget.py::test_seconds_per_step_skips_the_slow_first_steps_and_syncs_once_a_window"]),
    m("phema-inner-product-wrong-exponent", "post-hoc EMA: the inner product of two profiles is their integral",
      "smallgen/posthoc_ema.py", [("np.where(t_a <= t_b, g_b, g_a)", "np.where(t_a <= t_b, g_a, g_b)")],
      ["tests/test_posthoc_ema.py::test_the_inner_product_is_the_integral_of_the_two_densities",
       "tests/test_posthoc_ema.py::test_a_reconstructed_profile_equals_one_tracked_directly"]),
    m("phema-decay-off-by-one", "post-hoc EMA: tracking weights each step by its profile's density",
      "smallgen/posthoc_ema.py", [("    return (1.0 - 1.0 / step) ** (gamma + 1)", "    return (1.0 - 1.0 / (step + 1)) ** (gamma + 1)")],
      ["tests/test_posthoc_ema.py::test_tracking_weights_each_step_by_the_density_summed_over_it"]),
    m("phema-coefficients-not-normalised", "post-hoc EMA: the reconstruction's weights sum to one",
      "smallgen/posthoc_ema.py", [("    return solved / solved.sum()", "    return solved")],
      ["tests/test_posthoc_ema.py::test_the_coefficients_are_the_papers_least_squares_written_out"]),
    m("posthoc-no-snapshot-at-the-last-step", "--posthoc_ema snapshots the last step", "smallgen/trainer.py",
      [("        return step % every == 0 or step == self.plan.max_train_steps", "        return step % every == 0")],
      ["tests/test_posthoc_ema.py::test_training_stores_snapshots_that_a_resume_writes_again_the_same"]),
    m("posthoc-tracker-not-in-checkpoint", "a resumed --posthoc_ema run writes the same snapshots",
      "smallgen/objectives/unet_base.py",
      [('                **({} if self.posthoc is None else {"posthoc_ema": self.posthoc})}', "}")],
      ["tests/test_posthoc_ema.py::test_training_stores_snapshots_that_a_resume_writes_again_the_same"]),
    m("posthoc-forgotten-snapshot-kept", "a resume removes the snapshots of the attempt it forgets",
      "smallgen/trainer.py", [("            remove_snapshots_after(args.output_dir, self.global_step)  # those of a forgotten attempt\n",
                               "            pass\n")],
      ["tests/test_posthoc_ema.py::test_training_stores_snapshots_that_a_resume_writes_again_the_same"]),
    m("reconstruct-not-the-runs-sampler", "reconstruct_ema.py scores as the run scored itself (its fast sampler)",
      "smallgen/reconstruction.py", [("        device=args.device, **objective_cls.evaluation_flags(training))",
                                      "        device=args.device)")],
      ["tests/test_posthoc_ema.py::test_reconstruct_ema_scores_each_length_as_the_run_and_exports_the_best"]),
    m("reconstruct-exports-the-worst", "reconstruct_ema.py exports the best-scoring EMA",
      "smallgen/reconstruction.py", [("    best = min(range(len(rows)),", "    best = max(range(len(rows)),")],
      ["tests/test_posthoc_ema.py::test_reconstruct_ema_scores_each_length_as_the_run_and_exports_the_best"]),
    m("reconstruct-select-ignored", "--select kid chooses the EMA by KID", "smallgen/reconstruction.py",
      [("key=lambda i: rows[i][SELECT[args.select]])", "key=lambda i: rows[i][\"fid\"])")],
      ["tests/test_posthoc_ema.py::test_reconstruct_ema_scores_each_length_as_the_run_and_exports_the_best"]),
    m("reconstruct-step-ignored", "--step rebuilds the EMAs of that step",
      "smallgen/reconstruction.py", [("    step = step or snapshots[-1].step", "    step = snapshots[-1].step")],
      ["tests/test_posthoc_ema.py::test_reconstruct_ema_scores_each_length_as_the_run_and_exports_the_best"]),
    m("reconstruct-step-flag-ignored", "reconstruct_ema --step rebuilds the EMAs of that step",
      "smallgen/reconstruction.py", [("find_snapshots(args.run, args.step)", "find_snapshots(args.run, None)")],
      ["tests/test_posthoc_ema.py::test_reconstruct_ema_scores_each_length_as_the_run_and_exports_the_best"]),
    m("reconstruct-no-export-ignored", "reconstruct_ema --no_export leaves the run's pipeline as it was",
      "smallgen/reconstruction.py", [("    if args.export:", "    if True:")],
      ["tests/test_posthoc_ema.py::test_reconstruct_ema_scores_each_length_as_the_run_and_exports_the_best"]),
    m("num-evaluations-ignored", "--num_evaluations spreads that many scores over the run", "smallgen/trainer.py",
      [("evaluate_every = evaluation_every(steps, args.evaluate_every, args.num_evaluations,",
        "evaluate_every = evaluation_every(steps, args.evaluate_every, None,")],
      ["tests/test_posthoc_ema.py::test_reconstruct_ema_scores_each_length_as_the_run_and_exports_the_best"]),
    m("reconstruct-trained-export-not-kept", "the export as trained is kept, so a second call compares with it",
      "smallgen/reconstruction.py", [("    trained = load_file(kept) if os.path.exists(kept) else weights_of(pipeline, objective_cls)",
                                      "    trained = weights_of(pipeline, objective_cls)")],
      ["tests/test_posthoc_ema.py::test_reconstruct_ema_scores_each_length_as_the_run_and_exports_the_best"]),
    m("posthoc-sigma-rels-ignored", "--posthoc_ema_sigma_rels sets the tracked profiles", "smallgen/objectives/unet_base.py",
      [("PowerFunctionEMA(self.trained_parameters(), sigma_rels=args.posthoc_ema_sigma_rels)",
        "PowerFunctionEMA(self.trained_parameters())")],
      ["tests/test_posthoc_ema.py::test_reconstruct_ema_scores_each_length_as_the_run_and_exports_the_best"]),
    m("ct-huber-c-without-sqrt-d", "the default pseudo-Huber c is iCT's 0.00054 sqrt(d)", "models/consistency.py",
      [("    return 0.00054 * images[0].numel() ** 0.5", "    return 0.00054")],
      ["tests/test_consistency.py::test_the_default_huber_c_is_icts_for_the_image_size"]),
    m("init-from-latest-checkpoint", "--init_from starts from the run's exported (EMA) UNet, not its last checkpoint",
      "smallgen/objectives/consistency.py",
      [("""        return UNet2DModel.from_pretrained(init_folder(self.model_args.init_from), subfolder="unet",
                                           use_safetensors=True)""",
        """        import glob

        from safetensors.torch import load_file

        unet = UNet2DModel.from_pretrained(init_folder(self.model_args.init_from), subfolder="unet",
                                           use_safetensors=True)
        latest = sorted(glob.glob(os.path.join(self.model_args.init_from, "checkpoint-*")))[-1]
        unet.load_state_dict(load_file(os.path.join(latest, "unet.safetensors")))
        return unet""")],
      ["tests/test_consistency.py::test_tuning_starts_from_the_edm_runs_exported_unet"]),
    m("card-metrics-other-rows", "the model card's metrics table holds the run's results", "smallgen/export.py",
      [("                     metrics={k: v for k, v in results.items() if v is not None},",
        "                     metrics={k: v for k, v in card.arguments.items() if v is not None},")],
      [f"{TRAINER}::test_tiny_run_writes_a_loadable_pipeline"]),
    m("vae-latents-wrong-spread", "VAEPipeline draws its latents from N(0, I)", "pipelines/pipeline_baselines.py",
      [("""        return self.output(self.vae.decode(latents), output_type, return_dict)""",
        """        return self.output(self.vae.decode(0.5 * latents), output_type, return_dict)""")],
      [f"{BASELINES}::test_train_export_and_reload_identical_samples"]),
    m("precision-recall-other-k", "precision and recall use k = 3 nearest neighbours", "smallgen/scores.py",
      [("    prc = prc_features_to_metric(samples, reference, save_cpu_ram=True, verbose=verbose)",
        "    prc = prc_features_to_metric(samples, reference, save_cpu_ram=True, verbose=verbose, prc_neighborhood=4)")],
      ["tests/test_evaluation.py::test_precision_and_recall_use_three_nearest_neighbours"]),
    m("fid-small-sets-biased", "FID's small-set path divides by n - 1, as torch-fidelity's covariance does",
      "smallgen/scores.py", [("    centred_a = (a - mean_a) / (n1 - 1) ** 0.5", "    centred_a = (a - mean_a) / n1 ** 0.5")],
      ["tests/test_evaluation.py::test_frechet_distance_is_torch_fidelitys"]),
    m("fid-small-sets-trace-dropped", "FID's small-set path keeps the cross term",
      "smallgen/scores.py", [("    trace_sqrt = torch.linalg.svdvals(centred_a @ centred_b.T).sum()",
                              "    trace_sqrt = torch.linalg.svdvals(centred_a @ centred_b.T).max()")],
      ["tests/test_evaluation.py::test_frechet_distance_is_torch_fidelitys"]),
    m("loss-curves-every-epoch", "the loss curves are redrawn as often as the grids, not every epoch",
      "smallgen/trainer.py", [("                self.log_epoch(epoch, validated)\n",
                               "                self.log_epoch(epoch, validated)\n                self.draw_loss_curves()\n")],
      [f"{TRAINER}::test_the_loss_curves_are_drawn_as_often_as_the_grids"]),
    m("loss-curves-never", "the loss curves are drawn", "smallgen/trainer.py",
      [("                    self.draw_loss_curves()\n", "")],
      [f"{TRAINER}::test_the_loss_curves_are_drawn_as_often_as_the_grids"]),
    m("precision-recall-swapped", "precision is the share of samples near the reference, recall the reverse",
      "smallgen/scores.py",
      [('"precision": float(prc["precision"]), "recall": float(prc["recall"])}',
        '"precision": float(prc["recall"]), "recall": float(prc["precision"])}')],
      ["tests/test_evaluation.py::test_precision_and_recall_show_mode_dropping"]),
    m("data-shard-by-local-rank", "each process of every machine takes its own share of the global batch",
      "smallgen/data.py",
      [("accelerator.num_processes, accelerator.process_index)",
        "accelerator.num_processes, accelerator.local_process_index)")],
      [f"{TRAINER}::test_two_machines_train_like_one_machine_with_two_processes"]),
    m("optimizer-state-layout-not-matched", "a resumed --channels_last run steps like the unbroken one",
      "smallgen/checkpoints.py",
      [("                    state[key] = torch.empty_like(parameter).copy_(value)",
        "                    state[key] = value")],
      [f"{CHECKPOINTS}::test_resumed_optimizer_state_takes_its_parameters_layout"]),
    m("baseline-channels-last-ignored", "--channels_last reaches the baselines' networks",
      "smallgen/objectives/baselines.py",
      [("        if self.train_args.channels_last:  # before the optimizers take the parameters",
        "        if False:  # before the optimizers take the parameters")],
      ["tests/test_speed_flags.py::test_a_speed_flag_trains_resumes_exactly_and_exports_plain_weights[channels_last-dcgan]"]),
    m("baseline-compile-ignored", "--torch_compile reaches the baselines' training steps",
      "smallgen/objectives/baselines.py",
      [("torch.compile(network) if self.train_args.torch_compile else network", "network")],
      ["tests/test_speed_flags.py::test_a_speed_flag_trains_resumes_exactly_and_exports_plain_weights[compile-dcgan]"]),
    m("cm-boundary-not-shifted", "f(x, sigma_min) = x exactly, with the scheduler's boundary coefficients",
      "models/consistency.py", [("sd, shifted = self.sigma_data, sigma - self.sigma_min", "sd, shifted = self.sigma_data, sigma")],
      ["tests/test_consistency.py::test_the_parameterization_is_the_schedulers_and_exact_at_sigma_min"]),
    m("cm-target-with-gradient", "the consistency target f(x_r; r) carries no gradient", "models/consistency.py",
      [("        with torch.no_grad():\n            target = consistency(", "        if True:\n            target = consistency(")],
      ["tests/test_consistency.py::test_the_loss_is_ects_with_one_noise_and_no_gradient_through_the_target"]),
    m("cm-target-own-noise", "x_t and x_r share one noise", "models/consistency.py",
      [("target = consistency((clean + _column(r, clean) * noise)", "target = consistency((clean + _column(r, clean) * torch.randn_like(noise))")],
      ["tests/test_consistency.py::test_the_loss_is_ects_with_one_noise_and_no_gradient_through_the_target"]),
    m("cm-stage-not-resumed", "a resumed consistency run continues its stage schedule", "smallgen/objectives/consistency.py",
      [(', "consistency_progress": self.progress}', "}")],
      ["tests/test_consistency.py::test_consistency_tunes_resumes_exactly_and_exports"]),
    m("cm-pipeline-noise-condition-unscaled", "ConsistencyPipeline gives the UNet EDM's ln(sigma) / 4, as in training",
      "pipelines/pipeline_consistency.py", [("(t / TIMESTEP_PER_NOISE_CONDITION).float()", "t.float()")],
      ["tests/test_consistency.py::test_multistep_sampling_is_song_algorithm_1"]),
    m("cm-init-from-ignored", "--init_from starts tuning from the EDM run's exported UNet", "smallgen/objectives/consistency.py",
      [("        if not self.model_args.init_from:\n            return super().make_unet(**condition)",
        "        if True:\n            return super().make_unet(**condition)")],
      ["tests/test_consistency.py::test_tuning_starts_from_the_edm_runs_exported_unet"]),
    m("reconstruct-step-between-snapshots", "reconstruct_ema.py --step refuses a step without a snapshot, naming the "
      "nearest", "smallgen/reconstruction.py", [("    if used[-1].step != step:  # EDM2", "    if False:  # EDM2")],
      ["tests/test_posthoc_ema.py::test_reconstruct_ema_refuses_what_it_cannot_use"]),
    m("reconstruct-num-samples-loses", "reconstruct_ema.py --num_samples wins over the run's scoring count",
      "smallgen/reconstruction.py", [('num_samples = args.num_samples or run.training.get("evaluate_num_samples")',
                                      'num_samples = run.training.get("evaluate_num_samples") or args.num_samples')],
      ["tests/test_posthoc_ema.py::test_reconstruct_ema_scores_each_length_as_the_run_and_exports_the_best"]),
    m("list-flag-range-first-value-only", "a list flag's range check covers every value", "smallgen/arguments.py",
      [("for one in value if isinstance(value, list) else [value]:",
        "for one in value[:1] if isinstance(value, list) else [value]:")],
      ["tests/test_posthoc_ema.py::test_the_tracked_profiles_are_a_list_flag_of_recipes_too"]),
    m("renamed-flag-old-name-dropped", "--ddim_num_inference_steps still works, warning with its new name",
      "smallgen/objectives/unet_base.py", [('old_names=("ddim_num_inference_steps",)', "old_names=()")],
      [f"{CONFIG}::test_a_renamed_flag_keeps_its_old_name_for_a_release_with_a_warning"]),
    m("renamed-flag-recipe-key-refused", "a recipe's old flag name still works, warning with its new name",
      "smallgen/config.py", [("    values = renamed_keys(values, ARGUMENT_CLASSES, path)\n", "")],
      [f"{CONFIG}::test_a_renamed_flag_keeps_its_old_name_for_a_release_with_a_warning"]),
    m("context-row-not-one-image", "ClassConditionalPipeline takes one context row as one image's (diffusers' mixin "
      "passes it so)", "pipelines/pipeline_conditional.py",
      [("np.atleast_2d(np.asarray(context, dtype=np.float32))", "np.asarray(context, dtype=np.float32)")],
      ["tests/test_diffusers_pipeline_mixin.py::ContextConditionalPipelineFastTests::test_save_load_local"]),
    m("inception-resize-half-pixel", "the fast extractor resizes as TF 1.x (no half-pixel centres)",
      "smallgen/inception_speed.py", [("source = torch.arange(size_out, dtype=torch.float64) * (size_in / size_out)",
                                       "source = ((torch.arange(size_out, dtype=torch.float64) + 0.5) * (size_in / size_out) - 0.5).clamp(min=0)")],
      ["tests/test_inception_speed.py::test_the_resize_is_torch_fidelitys_tf1_bilinear"]),
    m("inception-merged-slice-shifted", "each branch reads its own channels of the merged 1x1 convolution",
      "smallgen/inception_speed.py", [("        return self.merged(x)[:, self.start:self.stop]",
                                       "        return self.merged(x)[:, self.start + 1:self.stop + 1]")],
      ["tests/test_inception_speed.py::test_pool_features_and_logits_equal_torch_fidelitys"]),
    m("inception-logits-without-bias", "the fast extractor's logits carry the classifier's bias",
      "smallgen/inception_speed.py", [('features["logits_unbiased"] + net.fc.bias.unsqueeze(0)',
                                       'features["logits_unbiased"] + 0')],
      ["tests/test_inception_speed.py::test_pool_features_and_logits_equal_torch_fidelitys"]),
    m("edm-unipc-state-unscaled", "EDM UniPC converts UniPC's coordinates to EDM's", "pipelines/scheduling_edm_unipc.py",
      [("state = sample.to(torch.float32) * (1 + sigma ** 2).sqrt()", "state = sample.to(torch.float32)")],
      ["tests/test_edm.py::test_edm_unipc_at_order_1_is_diffusers_edm_dpmsolver_at_order_1"]),
]


def copy_tree(destination: Path) -> None:
    """Tracked and untracked (not ignored) files, as git sees them."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def apply(text: str, mutation: Mutation) -> str | None:
    for old, new in mutation.edits:
        if text.count(old) != 1:
            return None
        text = text.replace(old, new)
    return text


PRELOADED = ("torch", "numpy", "safetensors", "diffusers", "accelerate", "transformers", "datasets", "PIL", "pytest")


def preload() -> None:
    """Import the heavy libraries once (seconds each time otherwise); each mutation's pytest runs in a fork
    of this process, which imports the project's own modules afresh from the mutated tree."""
    import importlib

    for name in PRELOADED:
        importlib.import_module(name)
    from diffusers import DDPMPipeline, UNet2DModel  # noqa: F401 (diffusers loads these lazily)


PYTEST_ARGS = ("-x", "-q", "-p", "no:cacheprovider", "-n", "0",  # one process: the mutation's few tests
               "-m", "slow or not slow")  # a named test runs even when it is marked slow


def run_tests(tree: Path, tests: tuple[str, ...], timeout: int, forked: bool = False) -> tuple[int, str]:
    """pytest on ``tests`` in ``tree``: exit code and the output's tail. ``forked``: in a fork of this process
    (which must not have run torch yet: a fork after OpenMP threads started can hang), else a fresh one."""
    if not forked:
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            result = subprocess.run([sys.executable, "-m", "pytest", *PYTEST_ARGS, *tests], cwd=tree, env=env,
                                    capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return -1, "timed out"
        return result.returncode, result.stdout[-1500:] + result.stderr[-1500:]
    return _run_forked(tree, tests, timeout)


def _run_forked(tree: Path, tests: tuple[str, ...], timeout: int) -> tuple[int, str]:
    import signal

    log = tree / ".mutation-log"
    pid = os.fork()
    if pid == 0:  # the child: the tree's modules, a fresh pytest session, its output in a file
        code = 3
        try:
            os.chdir(tree)
            sys.path.insert(0, str(tree))
            os.environ.update(PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
            with open(log, "w") as out:
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
                import pytest

                code = int(pytest.main([*PYTEST_ARGS, *tests]))
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -1, "timed out"
        time.sleep(0.05)
    output = log.read_text(errors="replace") if log.exists() else ""
    return os.waitstatus_to_exitcode(status), output[-3000:]


def check_mutation(tree: Path, mutation: Mutation, timeout: int) -> tuple[str, str]:
    path = tree / mutation.path
    if not path.exists():
        return "stale", f"{mutation.path} does not exist"
    original = path.read_text()
    mutated = apply(original, mutation)
    if mutated is None:
        return "stale", "its text is not found exactly once: update the mutation"
    path.write_text(mutated)
    try:
        code, output = run_tests(tree, mutation.tests, timeout, forked=True)
    finally:
        path.write_text(original)
    verdict = {1: "caught", 0: "survived"}.get(code, "error")
    return verdict, output


def worker(mutations: list[Mutation], timeout: int, results) -> None:
    """One process: its own copy of the tree, its mutations one at a time, one thread (the others share
    the cores), each verdict put on ``results`` as (name, verdict, seconds, output)."""
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    preload()
    with tempfile.TemporaryDirectory(prefix="smallgen-mutations-") as folder:
        tree = Path(folder) / ROOT.name
        copy_tree(tree)
        if (ROOT.parent / "shared").is_dir():  # beside the copy as beside the checkout: its data and test files
            os.symlink(ROOT.parent / "shared", Path(folder) / "shared")
        for mutation in mutations:
            start = time.perf_counter()
            verdict, output = check_mutation(tree, mutation, timeout)
            results.put((mutation.name, verdict, time.perf_counter() - start, output))


def run_all(chosen: list[Mutation], jobs: int, timeout: int, verbose: bool) -> dict[str, str]:
    """Every mutation in ``jobs`` worker processes, after the unmutated tree passes; {name: verdict}."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    results = context.Queue()
    check = context.Process(target=worker, args=([UNMUTATED], timeout, results))
    check.start()
    _, code, _, output = results.get()
    check.join()
    if code != "survived":  # the unmutated tree must pass, or every verdict below means nothing
        print(f"the unmutated copy fails its tests:\n{output}")
        sys.exit(2)
    workers = [context.Process(target=worker, args=(chosen[i::jobs], timeout, results))
               for i in range(jobs)]
    for process in workers:
        process.start()
    claims = {mu.name: mu.claim for mu in chosen}
    verdicts = {}
    while len(verdicts) < len(chosen):
        name, verdict, seconds, output = results.get()
        verdicts[name] = verdict
        print(f"{verdict:9s} {name:40s} {seconds:6.1f}s  {claims[name]}", flush=True)
        if verbose or verdict in ("error", "survived"):
            print("    " + output.strip().replace("\n", "\n    "))
    for process in workers:
        process.join()
    return verdicts


# No edit: the unmutated tree must pass this test before any verdict counts.
UNMUTATED = Mutation("unmutated", "the unmutated tree passes", "tools/mutations.py", (),
                     ("tests/test_claims.py::test_lr_schedule_counts_optimizer_steps",))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", help="Run only these mutations (names).")
    parser.add_argument("--list", action="store_true", help="List the mutations and exit.")
    parser.add_argument("--stale", action="store_true", help="Only list the mutations whose text is gone (seconds).")
    parser.add_argument("--timeout", type=int, default=900, help="Seconds per mutation.")
    parser.add_argument("--verbose", action="store_true", help="Print pytest's output for every mutation.")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                        else (os.cpu_count() or 1), help="Mutations checked at once (default: the cores).")
    args = parser.parse_args(argv)
    chosen = [mu for mu in MUTATIONS if not args.only or mu.name in args.only]
    unknown = set(args.only or ()) - {mu.name for mu in MUTATIONS}
    if unknown:
        parser.error(f"unknown mutation(s): {', '.join(sorted(unknown))}")
    if args.list:
        for mu in chosen:
            print(f"{mu.name:40s} {mu.claim}")
        return 0
    if args.stale:
        stale = [mu.name for mu in chosen
                 if not (ROOT / mu.path).exists() or apply((ROOT / mu.path).read_text(), mu) is None]
        print("\n".join(f"stale     {name}" for name in stale) or "none stale")
        return 1 if stale else 0
    verdicts = run_all(chosen, args.jobs, args.timeout, args.verbose)
    counts = {v: list(verdicts.values()).count(v) for v in ("caught", "survived", "stale", "error")}
    print(", ".join(f"{n} {v}" for v, n in counts.items()))
    return 0 if counts["caught"] == len(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
