"""mini-ImageNet (Vinyals et al., 2016) with the Ravi & Larochelle (2017) class split, as in MAML.

64 / 16 / 20 classes for meta-train / validation / meta-test, 600 images per class, 84x84 RGB.
The images are ImageNet-derived and cannot be downloaded automatically: users obtain them under the
ImageNet terms (see MINIIMAGENET_HOWTO) and point `data_dir` at them.

Expected layout (the common one, as produced by Ravi & Larochelle's instructions):

    <data_dir>/images/<filename>              e.g. images/n0153282900000005.jpg
    <data_dir>/{train,val,test}.csv           header `filename,label`, rows `n0153282900000005.jpg,n01532829`

Also accepted:
  * the CSVs under `<data_dir>/splits/ravi/` (the prototypical-networks layout), or anywhere via
    `csv_dir=`;
  * images sorted into `<data_dir>/<split>/<label>/<filename>` (the layout the MAML authors'
    `proc_images.py` produces) instead of one `images/` folder.

Each image is converted to RGB and, when it is not already 84x84, resized with PIL's Lanczos filter
(as the authors' `proc_images.py`). Pixels are uint8 0..255 (the episode sampler scales to [0, 1],
as the authors' `decode_jpeg / 255`). Classes are in order of first appearance in the CSV, examples
in CSV order. The arrays are cached as `miniimagenet_<split>_84x84_<fingerprint>.npz` in `cache_dir`
(default `$MAML_TF_CACHE_DIR`, else `$XDG_CACHE_HOME/maml_tf`, else `~/.cache/maml_tf`); the
fingerprint covers the CSV, the image folder and the image file sizes. The meta-training split takes
about 0.8 GB as uint8.

    train = load_miniimagenet("/data/miniImagenet", "train")
    sampler = train.sampler(num_ways=5, num_shots=1, num_query=15)
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from data import cache
from data.episodes import ImageClasses, default_cache_dir, default_data_dir

__all__ = ["MINIIMAGENET_HOWTO", "SPLITS", "load_miniimagenet", "load_miniimagenet_splits",
           "read_split_csv"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MINIIMAGENET_HOWTO = (
    "mini-ImageNet cannot be downloaded automatically (its images fall under the ImageNet terms of "
    "use): obtain ImageNet access at image-net.org, build the 84x84 images with the instructions in "
    "Ravi & Larochelle's repository (github.com/twitter/meta-learning-lstm, or the MAML authors' "
    "github.com/cbfinn/maml, data/miniImagenet), and put them in <data_dir>/images/ next to "
    "train.csv, val.csv and test.csv (experiments/miniimagenet.py --fixture runs the pipeline on synthetic data)")
_CACHE_VERSION = 1


def split_csv_path(data_dir: str | os.PathLike | None, split: str, csv_dir: str | os.PathLike | None = None) -> Path:
    """The CSV file that defines ``split``, where :func:`load_miniimagenet` looks for it (e.g. to record
    its hash); FileNotFoundError, saying how to get the data, if there is none."""
    data_dir = Path(data_dir if data_dir is not None else default_data_dir("miniimagenet")).expanduser().resolve()
    return _find_csv(data_dir, split, Path(csv_dir).expanduser().resolve() if csv_dir is not None else None)


def _find_csv(data_dir: Path, split: str, csv_dir: Path | None) -> Path:
    candidates = ([csv_dir / f"{split}.csv"] if csv_dir is not None else
                  [data_dir / f"{split}.csv", data_dir / "splits" / "ravi" / f"{split}.csv"])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"mini-ImageNet split file not found: looked for {' and '.join(map(str, candidates))}; "
        f"{MINIIMAGENET_HOWTO}.")


def read_split_csv(path: str | os.PathLike) -> list[tuple[str, list[str]]]:
    """[(label, [filename, ...]), ...] from a Ravi & Larochelle CSV, classes in order of appearance."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise ValueError(f"{path} is not a mini-ImageNet split file: its first line must be "
                         f"'filename,label', got {','.join(rows[0]) if rows else 'nothing'!r}.")
    classes: dict[str, list[str]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2:
            raise ValueError(f"{path}, line {line}: expected 'filename,label', got {','.join(row)!r}.")
        classes.setdefault(row[1].strip(), []).append(row[0].strip())
    if not classes:
        raise ValueError(f"{path} lists no images.")
    return list(classes.items())


def _image_paths(data_dir: Path, split: str, classes, csv_path: Path) -> list[list[Path]]:
    flat_root = data_dir / "images"
    if not flat_root.is_dir() and not (data_dir / split).is_dir():  # no images at all: say so at once
        total = sum(len(files) for _, files in classes)
        raise FileNotFoundError(
            f"mini-ImageNet images not found: {total} of the {total} images listed in {csv_path} are "
            f"missing from {flat_root} (the folder does not exist); {MINIIMAGENET_HOWTO}.")
    paths, missing, total = [], [], 0
    for label, files in classes:
        class_paths = []
        for name in files:
            total += 1
            path = flat_root / name
            if not path.is_file():
                alternative = data_dir / split / label / name
                if alternative.is_file():
                    path = alternative
                else:
                    missing.append(name)
            class_paths.append(path)
        paths.append(class_paths)
    if missing:
        raise FileNotFoundError(
            f"mini-ImageNet images not found: {len(missing)} of the {total} images listed in "
            f"{csv_path} are missing from {flat_root} (first: {missing[0]}); {MINIIMAGENET_HOWTO}.")
    return paths


def _fingerprint(csv_path: Path, paths: list[list[Path]], image_size: int) -> str:
    digest = hashlib.sha256()
    digest.update(csv_path.read_bytes())
    digest.update(f"{image_size}:{_CACHE_VERSION}".encode())
    for class_paths in paths:
        for path in class_paths:
            digest.update(f"{path}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def _load_image(path: Path, image_size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), resample=Image.Resampling.LANCZOS)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ValueError(f"cannot read mini-ImageNet image {path} ({type(err).__name__}: {err}); "
                         f"the file is corrupt, replace it.") from err


def load_miniimagenet(
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    *,
    image_size: int = 84,
    csv_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> ImageClasses:
    """One split of mini-ImageNet, ready to sample.

    Args:
      data_dir: folder laid out as in the module docstring; default `default_data_dir("miniimagenet")`.
      split: "train", "val" or "test".
      image_size: side of the square images (84 in the paper).
      csv_dir: folder holding the split CSVs, when they are neither in data_dir nor data_dir/splits/ravi.
      cache_dir: where the .npz cache goes; default `default_cache_dir()`.
      use_cache: read/write the cache; False always decodes and writes nothing.

    Returns:
      ImageClasses with images uint8 [classes, 600, S, S, 3] (a list of per-class arrays if class
      sizes differ) and class_names = the ImageNet ids ("n01532829", ...).

    Raises:
      FileNotFoundError: split CSV or images missing; the message says how to obtain mini-ImageNet.
      ValueError: a malformed CSV or an unreadable image.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    data_dir = Path(data_dir if data_dir is not None else default_data_dir("miniimagenet"))
    data_dir = data_dir.expanduser().resolve()
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    csv_path = split_csv_path(data_dir, split, csv_dir)
    classes = read_split_csv(csv_path)
    paths = _image_paths(data_dir, split, classes, csv_path)
    labels = tuple(label for label, _ in classes)
    counts = np.array([len(p) for p in paths], dtype=np.int64)

    flat = None
    cache_path = None
    if use_cache:
        fingerprint = _fingerprint(csv_path, paths, image_size)
        cache_path = cache_dir / f"miniimagenet_{split}_{image_size}x{image_size}_{fingerprint[:16]}.npz"
        cached = cache.read(cache_path, fingerprint, _CACHE_VERSION, "mini-ImageNet")
        flat = None if cached is None else cached["images"]
    if flat is None:
        start = time.perf_counter()
        flat = np.empty((int(counts.sum()), image_size, image_size, 3), dtype=np.uint8)
        for i, path in enumerate(p for class_paths in paths for p in class_paths):
            flat[i] = _load_image(path, image_size)
        log.info("mini-ImageNet %s: %d images decoded in %.1f s", split, len(flat),
                 time.perf_counter() - start)
        if use_cache:
            cache.write(cache_path, {"images": flat, "counts": counts, "labels": np.array(labels)}, fingerprint,
                        _CACHE_VERSION, "mini-ImageNet")

    if len(set(counts.tolist())) == 1:
        images = flat.reshape((len(counts), int(counts[0])) + flat.shape[1:])
    else:
        images = np.split(flat, np.cumsum(counts)[:-1])
    return ImageClasses(images=images, class_names=labels, name=f"mini-ImageNet ({split})",
                        class_noun="class", example_noun="images")


def load_miniimagenet_splits(data_dir: str | os.PathLike | None = None,
                             splits: Sequence[str] = SPLITS, **kwargs) -> dict[str, ImageClasses]:
    """{split: load_miniimagenet(data_dir, split, **kwargs)} for the given splits."""
    return {split: load_miniimagenet(data_dir, split, **kwargs) for split in splits}


