"""Flags and recipes: parsing, checks, --help, one-line errors (smallgen/config.py and the registry)."""


import pytest
import torch

from smallgen.errors import ConfigError
from tests.conftest import ROOT
from tests.helpers import script


def test_a_renamed_flag_keeps_its_old_name_for_a_release_with_a_warning(tmp_path):
    """--ddim_num_inference_steps became --grid_num_inference_steps: the old name still sets it, on the command
    line and in a recipe, warning with the new name; a recipe with both is refused; --help shows the new one."""
    from smallgen.config import parse_args

    renamed = "--ddim_num_inference_steps was renamed --grid_num_inference_steps"
    with pytest.warns(FutureWarning, match=renamed):
        assert parse_args(["--ddim_num_inference_steps", "7"])[1].grid_num_inference_steps == 7
    recipe = tmp_path / "old.yaml"
    recipe.write_text("ddim_num_inference_steps: 9\n")
    with pytest.warns(FutureWarning, match=renamed):
        assert parse_args(["--config", str(recipe)])[1].grid_num_inference_steps == 9
    with pytest.warns(FutureWarning, match=renamed):  # the command line still beats the recipe
        assert parse_args(["--config", str(recipe), "--grid_num_inference_steps", "4"])[1].grid_num_inference_steps == 4
    recipe.write_text("ddim_num_inference_steps: 9\ngrid_num_inference_steps: 4\n")
    with pytest.raises(ConfigError, match="sets both ddim_num_inference_steps and grid_num_inference_steps"):
        parse_args(["--config", str(recipe)])
    with pytest.raises(ConfigError, match="--grid_num_inference_steps must be at least 1"):
        parse_args(["--ddim_num_inference_steps", "0"])
    done = script("train_unconditional.py", "--help")
    assert "--grid_num_inference_steps" in done.stdout and "--ddim_num_inference_steps" not in done.stdout


def test_config_file_and_flag_errors(tmp_path, sprites_dir):
    from smallgen.config import parse_args

    good = tmp_path / "good.yaml"
    good.write_text("train_data_dir: x\nlearning_rate: 1e-4\nddpm_beta_schedule: cosine\nuse_ema: true\n")
    data_args, diffusion_args, train_args = parse_args(["--config", str(good), "--learning_rate", "3e-4"])
    assert train_args.learning_rate == 3e-4 and train_args.use_ema is True  # the flag beats the file
    from smallgen.objectives.diffusion import diffusers_beta_schedule

    assert diffusers_beta_schedule(diffusion_args) == "squaredcos_cap_v2" and data_args.train_data_dir == "x"

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("learning_rate: 1e-4\nlearnig_rate: 2e-4\n")
    with pytest.raises(ConfigError, match="unknown key\\(s\\) in .*: learnig_rate. Valid keys: .*learning_rate"):
        parse_args(["--config", str(unknown)])
    bad_value = tmp_path / "bad.yaml"
    bad_value.write_text("ddpm_beta_schedule: cosine_v3\n")
    with pytest.raises(ConfigError, match="--ddpm_beta_schedule must be one of linear, scaled_linear, squaredcos_cap_v2"):
        parse_args(["--config", str(bad_value)])
    token = tmp_path / "token.yaml"
    token.write_text("hub_token: hf_secret\n")
    with pytest.raises(ConfigError, match="keep tokens out of files"):
        parse_args(["--config", str(token)])
    with pytest.raises(ConfigError, match="unknown argument\\(s\\): --learnig_rate"):
        parse_args(["--learnig_rate", "1"])
    with pytest.raises(ConfigError, match="does not exist"):
        parse_args(["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(ConfigError, match="--grid_num_inference_steps must be between 1 and --ddpm_num_steps=100"):
        parse_args(["--ddpm_num_steps", "100", "--grid_num_inference_steps", "200", "--ddpm_num_inference_steps", "100"])


def test_cli_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ddpm_beta_schedule: cosine_v3\n")
    result = script("train_unconditional.py", "--config", bad)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --ddpm_beta_schedule must be one of linear, scaled_linear, squaredcos_cap_v2, cosine, sigmoid; "
        "got 'cosine_v3'"
    ]
    missing = script("train_unconditional.py", "--dataset_name", "./no/such/data", "--output_dir", tmp_path / "o")
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1].startswith(
        "error: dataset path './no/such/data' does not exist")
    assert "Traceback" not in missing.stderr
    choice = script("train_unconditional.py", "--mixed_precision", "fp8")
    assert choice.returncode == 2 and "invalid choice: 'fp8'" in choice.stderr


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_recipe_parses_and_builds_its_network(recipe, tmp_path):
    from models.unet import create_unet
    from smallgen.config import load_config_file, parse_args

    argv = ["--config", str(ROOT / "configs" / recipe)]
    teacher = load_config_file(str(ROOT / "configs" / recipe)).get("init_from")
    if teacher:  # a tuning recipe: a stand-in for the run it starts from, with the recipe's network
        from diffusers import EDMEulerScheduler

        from pipelines import EDMPipeline

        EDMPipeline(unet=create_unet("configs/models/unet-tiny.json", 16),
                    scheduler=EDMEulerScheduler()).save_pretrained(tmp_path / "teacher")
        argv += ["--init_from", str(tmp_path / "teacher")]
    data_args, diffusion_args, train_args = parse_args(argv)
    from smallgen.data import Labels
    from smallgen.trainer import build_objective

    labels = Labels(torch.arange(10), [f"class {i}" for i in range(10)]) if diffusion_args.class_conditional else None
    objective = build_objective(data_args, diffusion_args, train_args, labels)  # every check, no file touched
    sizes = {name: sum(p.numel() for p in n.parameters()) for name, n in objective.networks.items()}
    assert all(sizes.values()) and max(sizes.values()) > 1e5, sizes  # the label embedding is small
    if diffusion_args.model_type != "ddpm":
        return
    unet = create_unet(diffusion_args.model_config_name_or_path, data_args.resolution)
    assert unet.config.sample_size == data_args.resolution
    if recipe == "cifar10-ddpm-paper.yaml":
        assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == 35.7
        assert (train_args.learning_rate, train_args.lr_warmup_steps, train_args.ema_max_decay) == (2e-4, 5000, 0.9999)


def test_missing_unet_config_is_one_clear_line(tmp_path):
    result = script("train_unconditional.py", "--model_config_name_or_path", "configs/models/nope.json",
                     "--output_dir", tmp_path / "o")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: the UNet config 'configs/models/nope.json' does not exist (a JSON file, a name in configs/models/, "
        "a pipeline folder or a Hub id)"]
    assert not (tmp_path / "o").exists()


def test_help_is_a_manual():
    from smallgen.config import build_parser, help_groups

    parser = build_parser()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) > 60
    missing = [a.dest for a in flags if not (a.help or "").strip()]
    assert not missing, f"flags without a help text: {missing}"
    text = parser.format_help()
    assert "``" not in text
    first_flags = [line.split()[0] for line in text.splitlines() if line.strip().startswith("--")]
    assert first_flags[0] == "--config"
    titles = [line[:-1] for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert titles == ["options", *help_groups()], titles
    assert {"ddpm", "edm", "flow", "baselines"} <= set(help_groups())  # each model type's flags in its own
    general = parser._optionals._group_actions
    assert [a.dest for a in general] == ["help", "config"]  # every other flag sits in a group
    for action in flags:  # the default is stated once: by the formatter or by the help text itself
        shown = parser._get_formatter()._expand_help(action)
        assert shown.lower().count("default") <= 1, shown


def test_a_recipe_value_can_be_cleared(tmp_path):
    from smallgen.config import parse_args

    data_args, _, _ = parse_args(["--config", str(ROOT / "configs/quickstart.yaml"), "--dataset_name", "none",
                                  "--train_data_dir", str(tmp_path)])
    assert data_args.dataset_name is None and data_args.train_data_dir == str(tmp_path)
    recipe_value = parse_args(["--config", str(ROOT / "configs/quickstart.yaml")])[0].dataset_name
    assert recipe_value is not None  # the recipe does set it


@pytest.mark.parametrize("argv, message", [
    (["--learning_rate", "0"], "--learning_rate must be above 0; got 0.0"),
    (["--validation_fraction", "1"], "--validation_fraction must be at least 0.0 and below 1.0; got 1.0"),
    (["--max_train_steps", "0"], "--max_train_steps must be at least 1; got 0"),
    (["--ddp_timeout", "-5"], "--ddp_timeout must be above 0; got -5.0"),
    (["--model_type", "dcgan", "--kl_weight", "0.5"], "--kl_weight applies to --model_type vae"),
    (["--model_type", "vae", "--kl_weight", "-1"], "--kl_weight must be at least 0; got -1.0"),
    (["--model_type", "consistency", "--ct_gap_decay", "1"], "--ct_gap_decay must be above 1; got 1.0"),
    (["--class_conditional", "--condition_dropout", "1"], "--condition_dropout must be at least 0 and below 1; got 1.0"),
])
def test_a_value_outside_a_flags_range_or_choices_is_refused_naming_it(argv, message):
    from smallgen.config import parse_args

    with pytest.raises(ConfigError) as error:
        parse_args(argv)
    assert str(error.value).startswith(message), str(error.value)


def test_every_flag_is_declared_one_way_and_no_check_changes_a_value():
    """Every argument class of every script declares its flags with ``flag`` (help text, group, choices and
    range in one place); parsing keeps each value as given: an unset latent size stays unset, a 0 clipping norm 0."""
    import dataclasses

    from smallgen.arguments import OUR_KEYS
    from smallgen.config import ARGUMENT_CLASSES, parse_args
    from smallgen.evaluation import EvaluationArguments
    from smallgen.objectives import argument_parts
    from smallgen.report import ReportArguments

    for cls in (*ARGUMENT_CLASSES, *argument_parts(), EvaluationArguments, ReportArguments):
        for item in dataclasses.fields(cls):
            assert set(OUR_KEYS) <= set(item.metadata) and item.metadata["help"], f"{cls.__name__}.{item.name}"
    from smallgen.trainer import build_objective

    data_args, model_args, train_args = parse_args(["--model_type", "dcgan", "--max_grad_norm", "0"])
    objective = build_objective(data_args, model_args, train_args)
    assert objective.latent_dim == 100  # the DCGAN's own default, read where it is used
    assert model_args.latent_dim is None and train_args.max_grad_norm == 0
