import io

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from smallgen.config import DataArguments
from smallgen.data import (
    SPRITES_CLASS_NAMES,
    SPRITES_IMAGES_FILE,
    SPRITES_LABELS_FILE,
    ShuffledIndexBatches,
    decode_to_uint8,
    image_transform,
    load_image_datasets,
    load_sprites_npy,
    random_hflip,
    resize_and_crop,
    to_rgb,
    uint8_to_model_range,
)
from smallgen.errors import ConfigError, DataError
from smallgen.testing import write_sprites_npy
from tests.conftest import SHARED_CIFAR10, SHARED_SPRITES_LABELS, requires_shared_cifar10

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@requires_shared_cifar10()
def test_full_cifar10_from_shared_parquet():
    data = load_image_datasets(DataArguments(dataset_name=str(SHARED_CIFAR10)))
    assert len(data.train) == 50_000 and len(data.validation) == 10_000
    assert data.image_column == "img" and data.label_column == "label"
    assert data.class_names == CIFAR10_CLASSES
    # The first training image decodes to a 32x32 RGB image identical to the stored PNG.
    first = decode_to_uint8(data.train.select(range(3)), "img", DataArguments(resolution=32), show_progress=False)
    raw = np.array(Image.open(io.BytesIO(data.train[0]["img"]["bytes"])).convert("RGB"))
    assert torch.equal(first[0], torch.from_numpy(raw).permute(2, 0, 1))


def test_bundled_cifar10_sample(sample_cifar10):
    data = load_image_datasets(DataArguments(dataset_name=sample_cifar10))
    assert (len(data.train), len(data.validation)) == (1000, 200)
    assert data.class_names == CIFAR10_CLASSES
    pixels = decode_to_uint8(data.train, data.image_column, DataArguments(), show_progress=False)
    assert pixels.shape == (1000, 3, 32, 32) and pixels.dtype == torch.uint8
    for row in (0, 517, 999):
        raw = np.array(Image.open(io.BytesIO(data.train[row]["img"]["bytes"])))
        assert torch.equal(pixels[row], torch.from_numpy(raw).permute(2, 0, 1))


def test_max_samples_and_summary(sample_cifar10):
    data = load_image_datasets(
        DataArguments(dataset_name=sample_cifar10, max_train_samples=10, max_validation_samples=4)
    )
    assert (len(data.train), len(data.validation)) == (10, 4)
    assert "10 train / 4 validation images, 10 classes" in data.summary()


def test_sprites_npy_loader(tmp_path):
    images, labels = write_sprites_npy(str(tmp_path), num_images=40, seed=3)
    data = load_image_datasets(DataArguments(train_data_dir=str(tmp_path), resolution=16, validation_fraction=0.25))
    assert data.class_names == list(SPRITES_CLASS_NAMES) == ["hero", "non-hero", "food", "spell", "side-facing"]
    assert (len(data.train), len(data.validation)) == (30, 10)
    # Every image survives the PNG round trip exactly, with its label.
    full = load_sprites_npy(str(tmp_path))
    pixels = decode_to_uint8(full, "image", DataArguments(resolution=16), show_progress=False)
    assert torch.equal(pixels, torch.from_numpy(images).permute(0, 3, 1, 2))
    assert full["label"] == labels.argmax(1).tolist()
    # The held-out split is deterministic for a seed and differs for another.
    again = load_image_datasets(DataArguments(dataset_name=str(tmp_path), resolution=16, validation_fraction=0.25))
    other = load_image_datasets(
        DataArguments(dataset_name=str(tmp_path), resolution=16, validation_fraction=0.25, split_seed=1)
    )
    as_bytes = lambda d: [x["bytes"] for x in d.validation["image"]]  # noqa: E731
    assert as_bytes(again) == as_bytes(data) != as_bytes(other)


def test_sprites_without_labels(tmp_path):
    write_sprites_npy(str(tmp_path), num_images=8, with_labels=False)
    data = load_image_datasets(DataArguments(train_data_dir=str(tmp_path), resolution=16))
    assert data.label_column is None and data.class_names is None
    assert data.train.column_names == ["image"]


@pytest.mark.skipif(not SHARED_SPRITES_LABELS.exists(), reason="shared Sprites labels not found")
def test_sprites_real_labels_file(tmp_path):
    # The real labels file with generated images of the same count: the class counts are the
    # published ones, so argmax decoding and class order are right.
    labels = np.load(SHARED_SPRITES_LABELS)
    assert labels.shape == (89400, 5) and labels.dtype == np.float64
    np.save(tmp_path / SPRITES_IMAGES_FILE, np.zeros((len(labels), 16, 16, 3), dtype=np.uint8))
    np.save(tmp_path / SPRITES_LABELS_FILE, labels)
    dataset = load_sprites_npy(str(tmp_path))
    assert np.bincount(dataset["label"]).tolist() == [8000, 32400, 6000, 35000, 8000]


# ----------------------------------------------------------------------------- pixels


def test_mode_conversions_to_the_pixel():
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (10, 20, 30, 0))  # fully transparent -> white
    rgba.putpixel((1, 0), (10, 20, 30, 255))  # opaque -> itself
    assert list(to_rgb(rgba).getdata()) == [(255, 255, 255), (10, 20, 30)]
    half = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    assert to_rgb(half).getpixel((0, 0)) == (127, 127, 127)  # black at 50% over white
    grey = Image.new("L", (1, 1), 77)
    assert to_rgb(grey).getpixel((0, 0)) == (77, 77, 77)
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.putpixel((1, 0), 1)
    assert list(to_rgb(palette).getdata()) == [(0, 0, 0), (200, 100, 50)]
    palette.info["transparency"] = 0  # index 0 transparent -> white
    assert list(to_rgb(palette).getdata()) == [(255, 255, 255), (200, 100, 50)]
    la = Image.new("LA", (1, 1), (0, 0))
    assert to_rgb(la).getpixel((0, 0)) == (255, 255, 255)
    deep = Image.fromarray(np.array([[65535, 0]], dtype=np.uint16))
    assert list(to_rgb(deep).getdata()) == [(255, 255, 255), (0, 0, 0)]


def test_scaling_to_model_range():
    x = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.uint8)
    expected = torch.tensor([-1.0, 1 / 127.5 - 1, 127 / 127.5 - 1, 128 / 127.5 - 1, 254 / 127.5 - 1, 1.0])
    y = uint8_to_model_range(x)
    assert y.dtype == torch.float32 and torch.allclose(y, expected, atol=1e-6, rtol=0)
    assert torch.equal(((y + 1) * 127.5).round().to(torch.uint8), x)  # every level maps back exactly


def test_resize_only_when_needed_and_nearest_for_pixel_art():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    assert resize_and_crop(image, 16, "bilinear", False) is image  # right size: untouched
    doubled = np.array(resize_and_crop(image, 32, "nearest", True))
    assert np.array_equal(doubled, array.repeat(2, axis=0).repeat(2, axis=1))
    wide = Image.new("RGB", (64, 48))
    assert resize_and_crop(wide, 32, "bilinear", True).size == (32, 32)
    # Random crops differ between draws; centre crops do not.
    wide = Image.fromarray(rng.integers(0, 256, size=(32, 64, 3), dtype=np.uint8))
    crops = {np.array(resize_and_crop(wide, 32, "bilinear", False, np.random.default_rng(s))).tobytes()
             for s in range(5)}
    assert len(crops) > 1


def test_lazy_transform_range_shape_and_flip(sample_cifar10):
    data = load_image_datasets(DataArguments(dataset_name=sample_cifar10, max_train_samples=8))
    args = DataArguments(resolution=32)
    plain = data.train.with_transform(image_transform(args, "img", "label", train=False))[:8]
    assert plain["pixel_values"].shape == (8, 3, 32, 32)
    assert plain["pixel_values"].min() >= -1 and plain["pixel_values"].max() <= 1
    assert plain["labels"].tolist() == data.train["label"][:8]
    expected = uint8_to_model_range(decode_to_uint8(data.train, "img", args, show_progress=False))
    assert torch.equal(plain["pixel_values"], expected)
    flip_args = DataArguments(resolution=32, random_flip=True)
    flipped = data.train.with_transform(image_transform(flip_args, "img", None, train=True, seed=1))[:8]
    pv = flipped["pixel_values"]
    same = [torch.equal(pv[i], expected[i]) for i in range(8)]
    mirrored = [torch.equal(pv[i], expected[i].flip(-1)) for i in range(8)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(mirrored) and any(same)


def test_random_hflip_on_tensors():
    x = torch.arange(2 * 4 * 3 * 5, dtype=torch.float32).reshape(4 * 2, 3, 1, 5)
    y = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(y[i], x[i].flip(-1)) for i in range(len(x))]
    kept = [torch.equal(y[i], x[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_shuffled_index_batches_are_deterministic_and_sharded():
    one = ShuffledIndexBatches(100, 8, seed=5)
    assert len(one) == 12
    epoch0 = [b.tolist() for b in one.epoch(0)]
    assert epoch0 == [b.tolist() for b in ShuffledIndexBatches(100, 8, seed=5).epoch(0)]
    assert epoch0 != [b.tolist() for b in one.epoch(1)]
    assert [b.tolist() for b in one.epoch(0, start_batch=7)] == epoch0[7:]
    assert len({i for b in epoch0 for i in b}) == 96
    # Two processes with half the per-process batch see disjoint halves of the same global batches.
    shards = [ShuffledIndexBatches(100, 4, seed=5, num_processes=2, process_index=p) for p in (0, 1)]
    for a, b, whole in zip(shards[0].epoch(0), shards[1].epoch(0), one.epoch(0)):
        assert sorted(a.tolist() + b.tolist()) == sorted(whole.tolist())
    with pytest.raises(DataError, match="fewer than one batch"):
        ShuffledIndexBatches(3, 8, seed=0)


# ----------------------------------------------------------------------------- other sources


def _write_png(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def test_imagefolder_with_mixed_modes(tmp_path):
    _write_png(tmp_path / "a.png", Image.new("RGBA", (8, 8), (0, 0, 0, 0)))
    _write_png(tmp_path / "b.png", Image.new("L", (8, 8), 9))
    _write_png(tmp_path / "c.png", Image.new("RGB", (8, 8), (1, 2, 3)))
    data = load_image_datasets(DataArguments(train_data_dir=str(tmp_path), resolution=8, validation_fraction=0))
    pixels = decode_to_uint8(data.train, data.image_column, DataArguments(resolution=8), show_progress=False)
    colours = sorted(tuple(p[:, 0, 0].tolist()) for p in pixels)
    assert colours == [(1, 2, 3), (9, 9, 9), (255, 255, 255)]


def test_save_to_disk_folder(tmp_path):
    images, _ = write_sprites_npy(str(tmp_path / "npy"), num_images=6)
    load_sprites_npy(str(tmp_path / "npy")).save_to_disk(str(tmp_path / "saved"))
    data = load_image_datasets(DataArguments(dataset_name=str(tmp_path / "saved"), resolution=16, validation_fraction=0))
    assert len(data.train) == 6 and data.class_names == list(SPRITES_CLASS_NAMES)


def test_single_parquet_file(tmp_path):
    write_sprites_npy(str(tmp_path / "npy"), num_images=5)
    load_sprites_npy(str(tmp_path / "npy")).to_parquet(str(tmp_path / "sprites.parquet"))
    data = load_image_datasets(DataArguments(dataset_name=str(tmp_path / "sprites.parquet"), validation_fraction=0))
    assert len(data.train) == 5 and data.image_column == "image"


# ----------------------------------------------------------------------------- errors


def test_missing_paths():
    with pytest.raises(DataError, match="does not exist"):
        load_image_datasets(DataArguments(dataset_name="./no/such/folder"))
    with pytest.raises(DataError, match="does not exist"):
        load_image_datasets(DataArguments(train_data_dir="/no/such/folder"))
    with pytest.raises(DataError, match="no data given"):
        load_image_datasets(DataArguments())


def test_unreachable_hub_while_offline():
    # conftest sets HF_HUB_OFFLINE=1 before datasets is imported: the real hub code path runs and fails.
    with pytest.raises(DataError, match="could not load dataset 'uoft-cs/cifar10' from the Hugging Face Hub"):
        load_image_datasets(DataArguments(dataset_name="uoft-cs/cifar10"))


def test_no_image_column(tmp_path):
    datasets.Dataset.from_dict({"x": [1, 2, 3]}).to_parquet(str(tmp_path / "numbers.parquet"))
    with pytest.raises(DataError, match="has no image column"):
        load_image_datasets(DataArguments(dataset_name=str(tmp_path / "numbers.parquet")))
    with pytest.raises(DataError, match="--image_column 'pic' is not a column"):
        load_image_datasets(DataArguments(dataset_name=str(tmp_path / "numbers.parquet"), image_column="pic"))


def test_truncated_image_names_the_row(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (8, 8), (5, 5, 5)).save(good, format="PNG")
    rows = [{"bytes": good.getvalue(), "path": None}, {"bytes": good.getvalue()[:40], "path": None}]
    features = datasets.Features({"image": datasets.Image()})
    datasets.Dataset.from_dict({"image": rows}, features=features).to_parquet(str(tmp_path / "bad.parquet"))
    data = load_image_datasets(DataArguments(dataset_name=str(tmp_path / "bad.parquet"), validation_fraction=0))
    with pytest.raises(DataError, match="row 1 of column 'image' is not a readable image"):
        decode_to_uint8(data.train, "image", DataArguments(resolution=8), show_progress=False)
    with pytest.raises(DataError, match="not a readable image"):
        data.train.with_transform(image_transform(DataArguments(resolution=8), "image", None, True))[:2]


def test_empty_dataset(tmp_path):
    features = datasets.Features({"image": datasets.Image()})
    datasets.Dataset.from_dict({"image": []}, features=features).to_parquet(str(tmp_path / "empty.parquet"))
    with pytest.raises(DataError, match="is empty"):
        load_image_datasets(DataArguments(dataset_name=str(tmp_path / "empty.parquet")))


def test_bad_sprites_files(tmp_path):
    np.save(tmp_path / SPRITES_IMAGES_FILE, np.zeros((4, 16, 16, 3), dtype=np.float32))
    with pytest.raises(DataError, match="must be uint8 of shape"):
        load_sprites_npy(str(tmp_path))
    np.save(tmp_path / SPRITES_IMAGES_FILE, np.zeros((4, 16, 16, 3), dtype=np.uint8))
    np.save(tmp_path / SPRITES_LABELS_FILE, np.eye(5)[:3])
    with pytest.raises(DataError, match="must have shape"):
        load_sprites_npy(str(tmp_path))
    np.save(tmp_path / SPRITES_LABELS_FILE, np.full((4, 5), 0.2))
    with pytest.raises(DataError, match="must hold 0/1 values"):
        load_sprites_npy(str(tmp_path))
    (tmp_path / SPRITES_IMAGES_FILE).write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match="could not read .* as a .npy array"):
        load_sprites_npy(str(tmp_path))
    np.save(tmp_path / SPRITES_IMAGES_FILE, np.array([{"a": 1}], dtype=object))  # pickled: refused
    with pytest.raises(DataError, match="could not read"):
        load_sprites_npy(str(tmp_path))


def test_bad_arguments():
    with pytest.raises(ConfigError, match="--validation_fraction must be at least 0.0 and below 1.0; got 1.5"):
        DataArguments(validation_fraction=1.5)
    with pytest.raises(ConfigError, match="--interpolation must be one of"):
        DataArguments(interpolation="cubic-ish")


def test_sprites_multi_hot_labels_become_context_vectors(tmp_path):
    from smallgen.data import load_labels

    np.save(tmp_path / SPRITES_IMAGES_FILE, np.zeros((4, 16, 16, 3), dtype=np.uint8))
    multi_hot = np.array([[1, 0, 0, 0, 1], [0, 1, 0, 0, 0], [0, 0, 1, 1, 0], [1, 0, 0, 0, 0]], dtype=np.float64)
    np.save(tmp_path / SPRITES_LABELS_FILE, multi_hot)
    dataset = load_sprites_npy(str(tmp_path))
    assert "label" not in dataset.column_names
    labels = load_labels(dataset, "context", None, "sprites")
    assert labels.is_context and labels.size == 5 and torch.equal(labels.values, torch.tensor(multi_hot).float())


def test_labels_are_checked(tmp_path):
    from smallgen.data import load_labels

    ok = datasets.Dataset.from_dict({"label": [0, 2, 1]})
    assert load_labels(ok, "label", ["a", "b", "c"], "x").values.tolist() == [0, 2, 1]
    with pytest.raises(DataError, match="labels outside 0 ... 1: 0 ... 2"):
        load_labels(ok, "label", ["a", "b"], "x")
    with pytest.raises(DataError, match="missing labels"):
        load_labels(datasets.Dataset.from_dict({"label": [0, None]}), "label", None, "x")
    with pytest.raises(DataError, match="has no label column"):
        load_labels(ok, None, None, "x")
    with pytest.raises(DataError, match="integer class labels"):
        load_labels(datasets.Dataset.from_dict({"label": [0.5, 1.0]}), "label", None, "x")


def _two_config_dataset(folder):
    """A local dataset whose card declares two configurations: 'red' (6 red images) and 'blue' (4 blue)."""
    import datasets
    from PIL import Image

    for name, colour, count in (("red", (255, 0, 0), 6), ("blue", (0, 0, 255), 4)):
        images = [Image.new("RGB", (8, 8), colour) for _ in range(count)]
        (folder / name).mkdir(parents=True)
        part = datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))
        part.to_parquet(str(folder / name / "train-00000.parquet"))
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: red\n  data_files: red/*.parquet\n"
                                      "- config_name: blue\n  data_files: blue/*.parquet\n---\n")
    return folder


def test_dataset_config_name_picks_the_configuration_for_training_and_the_reference(tmp_path):
    """--dataset_config_name reaches datasets.load_dataset, in train_unconditional.py and evaluate_fid.py."""
    from smallgen.evaluation import EvaluationArguments
    from smallgen.reference import load_reference

    folder = str(_two_config_dataset(tmp_path / "colours"))
    cache = str(tmp_path / "cache")
    for config, count, colour in (("red", 6, [255, 0, 0]), ("blue", 4, [0, 0, 255])):
        data = load_image_datasets(DataArguments(dataset_name=folder, dataset_config_name=config, cache_dir=cache,
                                                 resolution=8, validation_fraction=0.0))
        images = decode_to_uint8(data.train, data.image_column, DataArguments(resolution=8), show_progress=False)
        assert len(images) == count and images[:, :, 0, 0].tolist() == [colour] * count
        reference, key, _ = load_reference(EvaluationArguments(pipeline="p", dataset_name=folder, split="train",
                                                               dataset_config_name=config, cache_dir=cache))
        assert len(reference) == count and reference[0][:, 0, 0].tolist() == colour and f"-{config}-" in key
