"""The data layer: any user data spec becomes train/validation `datasets.Dataset`s of RGB images.

Sources, in the order they are recognised:

* ``--train_data_dir`` or ``--dataset_name`` naming a folder with the Sprites course files
  (``sprites_1788_16x16.npy``, optionally ``sprite_labels_nc_1788_16x16.npy``);
* ``--train_data_dir``: a folder of image files (the ``imagefolder`` builder);
* ``--dataset_name`` naming a local ``save_to_disk`` folder, a folder of parquet/arrow shards
  (e.g. ``../shared/data/cifar10``) or a single data file;
* ``--dataset_name`` naming a Hugging Face Hub dataset (``uoft-cs/cifar10``).

Images are converted to RGB (transparency composited on white), resized only when their size
differs from ``--resolution``, optionally flipped, and scaled to [-1, 1]. Two ways to feed them:
``set_transform`` (lazy, any size of dataset) or ``decode_to_uint8`` (the whole split as one
uint8 tensor, which can live on the accelerator; augmentation then happens there, see
``ShuffledIndexBatches`` and ``uint8_to_model_range``).
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from smallgen.config import DataArguments
from smallgen.errors import DataError

SPRITES_IMAGES_FILE = "sprites_1788_16x16.npy"
SPRITES_LABELS_FILE = "sprite_labels_nc_1788_16x16.npy"
SPRITES_CLASS_NAMES = ("hero", "non-hero", "food", "spell", "side-facing")
IMAGE_COLUMN_CANDIDATES = ("image", "img", "images", "picture", "pixel_values")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "class", "fine_label")
VALIDATION_SPLIT_NAMES = ("validation", "valid", "val", "test")


@dataclass
class ImageDatasets:
    """Train and validation splits of one source, with what is known about their columns."""

    train: "datasets.Dataset"  # noqa: F821
    validation: "datasets.Dataset | None"  # noqa: F821
    image_column: str
    label_column: str | None
    class_names: list[str] | None
    source: str

    def summary(self) -> str:
        n_val = 0 if self.validation is None else len(self.validation)
        classes = f", {len(self.class_names)} classes" if self.class_names else ""
        return f"{self.source}: {len(self.train)} train / {n_val} validation images{classes}"


# ----------------------------------------------------------------------------- loading


def load_image_datasets(args: DataArguments) -> ImageDatasets:
    """Resolve the user's data spec into train/validation splits; DataError on any problem."""
    raw, source = _load_raw(args)
    train, validation = _pick_splits(raw, args, source)
    image_column = find_image_column(train, args.image_column, source)
    label_column = args.label_column or _find_label_column(train)
    if args.label_column is not None and args.label_column not in train.column_names:
        raise DataError(f"{source} has no column {args.label_column!r} (--label_column); its columns are "
                        f"{', '.join(train.column_names)}")
    class_names = None
    if label_column is not None:
        feature = train.features[label_column]
        class_names = list(getattr(feature, "names", None) or []) or None
    # Decode ourselves, so a broken file gives a message naming it rather than a PIL traceback.
    import datasets

    train = train.cast_column(image_column, datasets.Image(decode=False))
    if validation is not None:
        validation = validation.cast_column(image_column, datasets.Image(decode=False))
    if args.max_train_samples is not None:
        train = train.select(range(min(args.max_train_samples, len(train))))
    if validation is not None and args.max_validation_samples is not None:
        validation = validation.select(range(min(args.max_validation_samples, len(validation))))
    if len(train) == 0:
        raise DataError(f"the training split of {source} is empty: expected at least one image")
    return ImageDatasets(train, validation, image_column, label_column, class_names, source)


def load_split(args: DataArguments, split: str):
    """One named split of the user's data (e.g. ``train`` or ``test`` for FID references).

    Returns (dataset with undecoded images, image column, description). A source with a single
    unnamed split (an image folder, Sprites files, one data file) answers to ``train``.
    """
    import datasets

    raw, source = _load_raw(args)
    if isinstance(raw, datasets.DatasetDict):
        if split not in raw:
            raise DataError(f"{source} has no split {split!r}; splits: {', '.join(raw)}")
        dataset = raw[split]
    elif split == "train":
        dataset = raw
    else:
        raise DataError(f"{source} has a single split, 'train'; got --split {split!r}")
    image_column = find_image_column(dataset, args.image_column, source)
    if len(dataset) == 0:
        raise DataError(f"split {split!r} of {source} is empty")
    dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset, image_column, f"{source} [{split}]"


def _load_raw(args: DataArguments):
    import datasets

    if args.dataset_name is None and args.train_data_dir is None:
        raise DataError("no data given: pass --dataset_name (hub id or local path) or --train_data_dir")
    if args.dataset_name is not None and args.train_data_dir is not None:
        raise DataError("pass only one of --dataset_name and --train_data_dir")

    if args.train_data_dir is not None:
        folder = args.train_data_dir
        if not os.path.isdir(folder):
            raise DataError(f"--train_data_dir {folder!r} does not exist or is not a folder")
        if os.path.exists(os.path.join(folder, SPRITES_IMAGES_FILE)):
            return load_sprites_npy(folder), f"Sprites files in {folder}"
        try:
            raw = datasets.load_dataset("imagefolder", data_dir=folder, cache_dir=args.cache_dir)
        except Exception as exc:  # datasets raises many types; the message is what matters
            raise DataError(f"could not read images from --train_data_dir {folder!r}: {exc}") from exc
        return raw, f"image folder {folder}"

    name = args.dataset_name
    if os.path.exists(name):
        return _load_local(name, args), f"local dataset {name}"
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name:
        raise DataError(f"dataset path {name!r} does not exist (expected a folder or a data file)")
    try:
        raw = datasets.load_dataset(name, args.dataset_config_name, cache_dir=args.cache_dir)
    except Exception as exc:
        raise DataError(
            f"could not load dataset {name!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            "Check the id and your network (HF_HUB_OFFLINE=1 allows only cached datasets), "
            "or pass a local folder."
        ) from exc
    return raw, f"hub dataset {name}"


def _load_local(path: str, args: DataArguments):
    import datasets

    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, SPRITES_IMAGES_FILE)):
            return load_sprites_npy(path)
        if any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json")):
            try:
                return datasets.load_from_disk(path)
            except Exception as exc:
                raise DataError(f"could not read the saved dataset in {path!r}: {exc}") from exc
        builder_args = (path, args.dataset_config_name)
        builder_kwargs = {}
    else:
        extension = os.path.splitext(path)[1].lstrip(".")
        builder = {"parquet": "parquet", "arrow": "arrow", "csv": "csv", "json": "json", "jsonl": "json"}
        if extension not in builder:
            raise DataError(f"{path!r} is not a dataset file: expected .parquet, .arrow, .csv or .json")
        builder_args = (builder[extension],)
        builder_kwargs = {"data_files": {"train": path}}
    try:
        return datasets.load_dataset(*builder_args, cache_dir=args.cache_dir, **builder_kwargs)
    except Exception as exc:
        if "corresponds to no data" in str(exc):
            raise DataError(f"the dataset in {path!r} is empty: expected at least one image") from exc
        raise DataError(f"could not read a dataset from {path!r} ({type(exc).__name__}: {exc})") from exc


def _pick_splits(raw, args: DataArguments, source: str):
    import datasets

    if isinstance(raw, datasets.DatasetDict):
        if len(raw) == 0:
            raise DataError(f"{source} has no splits")
        train = raw["train"] if "train" in raw else raw[next(iter(raw))]
        for name in VALIDATION_SPLIT_NAMES:
            if name in raw and raw[name] is not train:
                return train, raw[name]
    else:
        train = raw
    if len(train) == 0:
        raise DataError(f"the training split of {source} is empty: expected at least one image")
    if args.validation_fraction == 0 or len(train) < 2:
        return train, None
    held_out = train.train_test_split(test_size=args.validation_fraction, seed=args.split_seed)
    return held_out["train"], held_out["test"]


def find_image_column(dataset, requested: str | None, source: str) -> str:
    import datasets

    columns = list(dataset.column_names)
    if requested is not None:
        if requested not in columns:
            raise DataError(f"--image_column {requested!r} is not a column of {source}; columns: {columns}")
        return requested
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):
            return name
    for name in IMAGE_COLUMN_CANDIDATES:
        if name in columns:
            return name
    raise DataError(
        f"{source} has no image column: expected an Image feature or one of "
        f"{list(IMAGE_COLUMN_CANDIDATES)}, found {columns}; name it with --image_column"
    )


def _find_label_column(dataset) -> str | None:
    import datasets

    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.ClassLabel):
            return name
    for name in LABEL_COLUMN_CANDIDATES:
        if name in dataset.column_names:
            return name
    return None


@dataclass
class Labels:
    """A split's conditioning: class indices (N,) with their names, or context vectors (N, K)."""

    values: torch.Tensor
    names: list[str] | None

    @property
    def is_context(self) -> bool:
        return self.values.ndim == 2

    @property
    def size(self) -> int:
        """Number of classes, or the context vector's length."""
        if self.is_context:
            return self.values.shape[1]
        return len(self.names) if self.names else int(self.values.max()) + 1


def load_labels(dataset, column: str | None, class_names: list[str] | None, source: str) -> Labels:
    """The labels of ``column``: integers (classes) or equal-length 0/1 vectors (context); DataError else."""
    if column is None:
        raise DataError(f"{source} has no label column: class-conditional training needs one (--label_column)")
    values = dataset[column]
    if any(v is None for v in values):
        raise DataError(f"column {column!r} of {source} has missing labels")
    if values and isinstance(values[0], (list, tuple)):
        array = np.asarray(values, dtype=np.float32)
        if array.ndim != 2 or not np.isin(array, (0, 1)).all():
            raise DataError(f"column {column!r} of {source} must hold class indices or 0/1 context vectors")
        return Labels(torch.from_numpy(array), None)
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"column {column!r} of {source} must hold integer class labels; found {array.dtype}")
    count = len(class_names) if class_names else int(array.max()) + 1
    if array.min() < 0 or array.max() >= count:
        raise DataError(f"column {column!r} of {source} has labels outside 0 ... {count - 1}: "
                        f"{int(array.min())} ... {int(array.max())}")
    return Labels(torch.from_numpy(array.astype(np.int64)), class_names)


def load_sprites_npy(folder: str):
    """The Sprites course files as a Dataset with ``image`` (PNG) and, if present, the labels.

    ``sprites_1788_16x16.npy`` is uint8 (N, H, W, 3); ``sprite_labels_nc_1788_16x16.npy`` is float
    (N, 5) over hero, non-hero, food, spell, side-facing. The course's file is one-hot (every row
    a single 1): it becomes the ClassLabel column ``label``. Rows with several 1s (multi-hot) become
    the 0/1 vector column ``context`` instead, for a learned context embedding.
    """
    import datasets

    images_path = os.path.join(folder, SPRITES_IMAGES_FILE)
    images = _load_npy(images_path)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(
            f"{images_path} must be uint8 of shape (N, H, W, 3); found {images.dtype} {images.shape}"
        )
    if len(images) == 0:
        raise DataError(f"{images_path} holds no images")
    columns = {"image": [{"bytes": _png_bytes(a), "path": None} for a in images]}
    features = {"image": datasets.Image()}
    labels_path = os.path.join(folder, SPRITES_LABELS_FILE)
    if os.path.exists(labels_path):
        one_hot = _load_npy(labels_path)
        expected = (len(images), len(SPRITES_CLASS_NAMES))
        if one_hot.shape != expected:
            raise DataError(f"{labels_path} must have shape {expected} to match the images; found {one_hot.shape}")
        if not np.isin(one_hot, (0, 1)).all():
            raise DataError(f"{labels_path} must hold 0/1 values (one-hot or multi-hot rows)")
        if (one_hot.sum(axis=1) == 1).all():
            columns["label"] = one_hot.argmax(axis=1).tolist()
            features["label"] = datasets.ClassLabel(names=list(SPRITES_CLASS_NAMES))
        else:
            columns["context"] = one_hot.astype(np.float32).tolist()
            features["context"] = datasets.Sequence(datasets.Value("float32"), length=len(SPRITES_CLASS_NAMES))
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def _load_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)  # never unpickle a downloaded file
    except Exception as exc:
        raise DataError(f"could not read {path} as a .npy array ({type(exc).__name__}: {exc})") from exc


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- image preparation


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparent pixels become white (not black, as a bare convert would)."""
    if image.mode == "RGB":
        return image
    if (image.mode == "P" and "transparency" in image.info) or image.mode in ("PA", "LA"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits before the colour conversion.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return image.convert("RGB")


def decode_image(value, where: str) -> Image.Image:
    """Decode one stored image ({'bytes', 'path'} or PIL) to RGB; DataError names ``where``."""
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict) and value.get("bytes") is not None:
            image = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict) and value.get("path"):
            image = Image.open(value["path"])
        else:
            raise DataError(f"{where} holds no image data")
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{where} is not a readable image ({type(exc).__name__}: {exc})") from exc
    return to_rgb(image)


def resize_and_crop(image: Image.Image, resolution: int, interpolation: str, center_crop: bool,
                    rng: np.random.Generator | None = None) -> Image.Image:
    """Resize the shorter side to ``resolution`` (only if needed) and crop the square (torchvision).

    The crop is centred when ``center_crop`` or when no ``rng`` is given; else random, drawn from
    ``rng`` so that a seeded transform crops the same way every run.
    """
    from torchvision.transforms import v2

    if min(image.size) != resolution:
        image = v2.functional.resize(image, [resolution], interpolation=v2.InterpolationMode[interpolation.upper()])
    width, height = image.size
    if (width, height) == (resolution, resolution):
        return image
    if center_crop or rng is None:
        return v2.functional.center_crop(image, [resolution, resolution])
    top, left = int(rng.integers(0, height - resolution + 1)), int(rng.integers(0, width - resolution + 1))
    return v2.functional.crop(image, top, left, resolution, resolution)


def uint8_to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the range every model here works in."""
    return images.to(torch.float32) / 127.5 - 1.0


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of a (N, C, H, W) batch left-right with probability 1/2, on its device."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def image_transform(data_args: DataArguments, image_column: str, label_column: str | None,
                    train: bool, seed: int = 0):
    """A ``set_transform`` function giving ``pixel_values`` in [-1, 1] (and ``labels``)."""
    rng = np.random.default_rng(seed)

    def transform(batch):
        pixels = []
        for value in batch[image_column]:
            image = decode_image(value, f"an image in column {image_column!r}")
            image = resize_and_crop(image, data_args.resolution, data_args.interpolation,
                                    data_args.center_crop, rng if train else None)
            array = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
            if train and data_args.random_flip and rng.random() < 0.5:
                array = array.flip(-1)
            pixels.append(uint8_to_model_range(array))
        out = {"pixel_values": torch.stack(pixels)}
        if label_column is not None:
            out["labels"] = torch.as_tensor(batch[label_column])
        return out

    return transform


def decode_to_uint8(dataset, image_column: str, data_args: DataArguments, desc: str = "decoding",
                    show_progress: bool = True) -> torch.Tensor:
    """The whole split as one uint8 (N, 3, R, R) tensor (resized, and centre-cropped where not square)."""
    from tqdm.auto import tqdm

    out = torch.empty((len(dataset), 3, data_args.resolution, data_args.resolution), dtype=torch.uint8)
    row, cropped = 0, 0
    with tqdm(total=len(dataset), desc=desc, unit="img", disable=not show_progress) as bar:
        for batch in dataset.iter(batch_size=1000):
            for value in batch[image_column]:
                image = decode_image(value, f"row {row} of column {image_column!r}")
                cropped += image.width != image.height
                image = resize_and_crop(image, data_args.resolution, data_args.interpolation, True)
                out[row] = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
                row += 1
            bar.update(len(batch[image_column]))
    if cropped and not data_args.center_crop and show_progress:
        print(f"warning: {cropped} of {len(dataset)} images are not square; decoded once, they are centre-cropped "
              "(random crops need --dataset_on_device no; --center_crop says centre crops are meant)",
              file=sys.stderr, flush=True)
    return out


def fits_in_memory(num_images: int, resolution: int, limit_bytes: int) -> bool:
    return num_images * 3 * resolution * resolution <= limit_bytes


class ShuffledIndexBatches:
    """Batches of indices over N items: a fresh permutation per epoch from (seed, epoch).

    Being a pure function of (seed, epoch, step), it makes resuming exact: the batch at any step
    is known without replaying the epoch. With several processes each takes an equal strided
    share of every global batch; the ragged tail of an epoch is dropped.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, num_processes: int = 1,
                 process_index: int = 0):
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.num_processes = num_processes
        self.process_index = process_index
        self.global_batch = batch_size * num_processes
        if num_items < self.global_batch:
            raise DataError(
                f"{num_items} training images are fewer than one batch of {self.global_batch} "
                f"({batch_size} per process x {num_processes}): lower --train_batch_size"
            )

    def __len__(self) -> int:
        return self.num_items // self.global_batch

    def epoch(self, epoch: int, start_batch: int = 0, device=None):
        """Index batches of ``epoch`` from ``start_batch`` on; on ``device`` if given (one copy an epoch,
        not a host-to-device copy every step)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_items, generator=generator).to(device)
        for b in range(start_batch, len(self)):
            chunk = order[b * self.global_batch:(b + 1) * self.global_batch]
            yield chunk[self.process_index::self.num_processes]


class ImageFeeder:
    """Training batches in [-1, 1] on the device, in the order given by ShuffledIndexBatches.

    Fast path: the split decoded once into one uint8 tensor on the device. Otherwise the
    ``datasets`` transform decodes each batch (DataLoader workers).
    """

    def __init__(self, dataset, image_column: str, data_args, train_args, accelerator):
        self.device = accelerator.device
        self.random_flip = data_args.random_flip
        self.batches = ShuffledIndexBatches(len(dataset), train_args.train_batch_size, train_args.seed,
                                            accelerator.num_processes, accelerator.process_index)
        choice = train_args.dataset_on_device
        fits = fits_in_memory(len(dataset), data_args.resolution, train_args.max_dataset_bytes)
        self.on_device = choice == "yes" or (choice == "auto" and fits)
        if self.on_device:
            self.images = decode_to_uint8(dataset, image_column, data_args, desc="loading images",
                                          show_progress=accelerator.is_local_main_process).to(self.device)
        else:
            no_flip = dataclasses.replace(data_args, random_flip=False)  # flips happen on the device
            self.dataset = dataset.with_transform(image_transform(no_flip, image_column, None, train=True,
                                                                  seed=train_args.seed))

    def __len__(self) -> int:
        return len(self.batches)

    def use_labels(self, labels: torch.Tensor) -> None:
        """Yield each batch's labels too (a small tensor: kept on the device whatever the images do)."""
        self.labels = labels.to(self.device)

    def epoch(self, epoch: int, start_batch: int = 0):
        """(images in [-1, 1], labels or None) for each batch of ``epoch`` from ``start_batch`` on."""
        labels = getattr(self, "labels", None)
        for indices in self.batches.epoch(epoch, start_batch, self.device if self.on_device else None):
            if self.on_device:
                images = uint8_to_model_range(self.images[indices])
            else:
                images = self.dataset[indices.tolist()]["pixel_values"].to(self.device, non_blocking=True)
            yield images, None if labels is None else labels[indices.to(self.device)]

    def augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_hflip(images, generator) if self.random_flip else images
