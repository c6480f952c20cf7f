"""The bad-input tour: each case stops with one clear message and writes nothing, or, where the input
is legitimately accepted, converts it to the right pixels."""

import numpy as np
import pytest
from PIL import Image

from smallgen.config import DataArguments
from smallgen.data import decode_to_uint8, load_image_datasets
from smallgen.errors import ConfigError, DataError, UserError
from tests.helpers import run_training, script, snapshot, tiny_args


def image_folder(path, extra=None, count=12):
    """``count`` valid 16 px PNGs, plus whatever ``extra(path)`` adds."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path / f"ok{i:02d}.png")
    if extra:
        extra(path)
    return path


def _train(folder, config, out, **overrides):
    return run_training(tiny_args(folder, config, out, **{"max_train_steps": 1, "validation_fraction": 0.0,
                                                          "train_batch_size": 4, "checkpointing_steps": None,
                                                          **overrides}))


@pytest.mark.parametrize("name,content", [("empty.png", b""), ("notes.png", b"these are my notes, not a picture")])
def test_unreadable_files_stop_with_their_name(tmp_path, tiny_unet_config, name, content):
    folder = image_folder(tmp_path / "data", lambda d: (d / name).write_bytes(content))
    out = tmp_path / "out"
    with pytest.raises(DataError, match=f"is not a readable image .*{name}"):
        _train(folder, tiny_unet_config, out)
    assert not out.exists()


def test_an_unreadable_file_is_one_line_from_the_command_line(tmp_path, tiny_unet_config):
    folder = image_folder(tmp_path / "data", lambda d: (d / "empty.png").write_bytes(b""))
    result = script("train_unconditional.py", *tiny_args(folder, tiny_unet_config, tmp_path / "out", max_train_steps=1))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: row ")
    assert "empty.png" in result.stderr.strip().splitlines()[-1] and not (tmp_path / "out").exists()


def _decoded(folder, file_name, **data_args):
    data = load_image_datasets(DataArguments(train_data_dir=str(folder), validation_fraction=0.0, **data_args))
    pixels = decode_to_uint8(data.train, data.image_column, DataArguments(**data_args), show_progress=False)
    names = [value["path"].rsplit("/", 1)[-1] for value in data.train.cast_column(data.image_column,
             data.train.features[data.image_column].__class__(decode=False))[data.image_column]]
    return pixels[names.index(file_name)].permute(1, 2, 0).numpy()


def test_a_16_bit_png_is_scaled_to_8_bits(tmp_path):
    grey16 = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)  # 0 ... 65535
    folder = image_folder(tmp_path / "data", lambda d: Image.fromarray(grey16).save(d / "deep.png"))
    assert Image.open(folder / "deep.png").mode.startswith("I")
    pixels = _decoded(folder, "deep.png", resolution=16)
    expected = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert all(np.array_equal(pixels[..., c], expected) for c in range(3))


def test_a_cmyk_jpeg_becomes_rgb(tmp_path):
    folder = image_folder(tmp_path / "data", lambda d: Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(
        d / "cmyk.jpg", quality=100))
    pixels = _decoded(folder, "cmyk.jpg", resolution=16).astype(int)
    assert np.abs(pixels - [255, 0, 0]).max() <= 3  # pure red, up to JPEG rounding


def test_an_animated_gif_gives_its_first_frame(tmp_path):
    def gif(d):
        first, second = Image.new("RGB", (16, 16), (250, 10, 10)), Image.new("RGB", (16, 16), (10, 10, 250))
        first.save(d / "anim.gif", save_all=True, append_images=[second], duration=100)

    folder = image_folder(tmp_path / "data", gif)
    assert getattr(Image.open(folder / "anim.gif"), "n_frames", 1) == 2
    pixels = _decoded(folder, "anim.gif", resolution=16).astype(int)
    assert np.abs(pixels - [250, 10, 10]).max() <= 8  # the first (red) frame, through the GIF palette


@pytest.mark.parametrize("center_crop", [False, True])
def test_mixed_sizes_are_resized_and_centre_cropped(tmp_path, capfd, center_crop):
    wide = np.zeros((24, 40, 3), dtype=np.uint8)
    wide[:, 12:28] = [0, 200, 0]  # a green band in the middle 16 of 40 columns
    folder = image_folder(tmp_path / "data", lambda d: Image.fromarray(wide).save(d / "wide.png"))
    capfd.readouterr()
    data = load_image_datasets(DataArguments(train_data_dir=str(folder), validation_fraction=0.0, resolution=16))
    decode_to_uint8(data.train, data.image_column, DataArguments(resolution=16, center_crop=center_crop))
    warned = "images are not square" in capfd.readouterr().err
    assert warned != center_crop  # said once when random crops were asked for; silent when centre crops were
    pixels = _decoded(folder, "wide.png", resolution=16, center_crop=center_crop)
    expected = np.array(Image.fromarray(wide).resize((26, 16), Image.Resampling.BILINEAR))[:, 5:21]  # 40 * 16 // 24
    assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= 1


def test_an_empty_folder_and_a_parquet_without_images(tmp_path, tiny_unet_config):
    import datasets

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="doesn't contain any data files"):
        _train(tmp_path / "empty", tiny_unet_config, tmp_path / "out")
    table = tmp_path / "table.parquet"
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).to_parquet(str(table))
    with pytest.raises(DataError, match="image"):
        run_training(tiny_args(None, tiny_unet_config, tmp_path / "out", dataset_name=table, max_train_steps=1))
    assert not (tmp_path / "out").exists()


def test_a_resolution_the_unet_cannot_take(tmp_path, tiny_unet_config):
    folder = image_folder(tmp_path / "data")
    with pytest.raises(ConfigError, match="halves the image 1 times, which 15 px does not allow"):
        _train(folder, tiny_unet_config, tmp_path / "out", resolution=15)
    assert not (tmp_path / "out").exists()


def test_a_recipe_value_of_the_wrong_type(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: fast\n")
    result = script("train_unconditional.py", "--config", recipe, "--output_dir", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {recipe}: learning_rate must be a number; got 'fast'"]
    recipe.write_text("learning_rate: 1e-4\nresolution: 16.5\n")  # 1e-4 (YAML text) is a number; 16.5 is no int
    with pytest.raises(ConfigError, match="resolution must be a whole number; got 16.5"):
        from smallgen.config import parse_args

        parse_args(["--config", str(recipe)])


@pytest.mark.parametrize("other", [dict(model_type="vae", model_config_name_or_path=None, base_channels=8,
                                        latent_dim=16), dict(resolution=8)])
def test_a_checkpoint_of_another_kind_of_run_is_refused(sprites_dir, tiny_unet_config, tmp_path, other):
    out = tmp_path / "run"
    run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=2, checkpointing_steps=2))
    before = snapshot(out)
    what = "model_type 'ddpm' there, 'vae' here" if "model_type" in other else "resolution 16 there, 8 here"
    with pytest.raises(UserError, match=f"checkpoint-2 belongs to another kind of run: {what}"):
        run_training(tiny_args(sprites_dir, tiny_unet_config, out, max_train_steps=4,
                               resume_from_checkpoint=out / "checkpoint-2", **other))
    assert snapshot(out) == before


@pytest.mark.parametrize("command", ["train_unconditional.py", "evaluate_fid.py"])
def test_a_torchvision_built_for_another_torch_is_one_line(tmp_path, command):
    """PyPI's torchvision beside a CPU-only torch fails inside transformers' imports with this
    RuntimeError (reproduced: torch 2.13.0+cpu with torchvision 0.28.0); the scripts say what to do."""
    from tests.conftest import ROOT

    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    result = script(command, "--help", env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: torchvision was not built for the installed torch") and "Traceback" not in result.stderr
    assert "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu" in last
