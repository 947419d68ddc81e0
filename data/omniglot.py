"""Omniglot (Lake et al., 2015) for few-shot classification, prepared as in the MAML paper.

Data on disk: the dataset's two canonical archives, as published in github.com/brendenlake/omniglot
(`python/`), in one folder `data_dir`:

    images_background.zip   30 alphabets, 964 characters   images_background/<Alphabet>/characterNN/IIII_DD.png
    images_evaluation.zip   20 alphabets, 659 characters   images_evaluation/<Alphabet>/characterNN/IIII_DD.png

(or the same archives unpacked into folders `images_background/` and `images_evaluation/`). Each
drawing is a 105x105 1-bit PNG, black strokes on white. When neither is found, `load_omniglot` tries
to download the archives from that repository (the machine needs internet access) and otherwise
stops with one sentence saying how to get them.

Preprocessing (once, then cached):
  * resize to 28x28 with PIL, the way the authors' `resize_images.py` did: `Image.open(png).resize(
    (28, 28), resample=LANCZOS)`. PIL opens these PNGs in mode "1" and always resizes mode "1"
    images with nearest neighbour, whatever filter is asked for, so the authors' 28x28 images are
    binary. `resize="authors"` (default) reproduces exactly that; `resize="lanczos"` converts to
    greyscale first and applies a real Lanczos filter (anti-aliased strokes, as several ports do).
  * pixel convention, as the authors' `data_generator.py` feeds the network (`1 - png / 255`):
    strokes 1, background 0. Stored as uint8 (strokes 255); the episode sampler scales by 1/255.
  * the result, all 1623 characters x 20 drawings, is cached as `omniglot_28x28_<resize>.npz` in
    `data_dir` when it is writable (a folder without write bits counts as read-only, even for root),
    otherwise in `cache_dir` (default `$MAML_TF_CACHE_DIR`, else `$XDG_CACHE_HOME/maml_tf`, else
    `~/.cache/maml_tf`). The cache
    records a fingerprint (SHA-256) of the archives and is rebuilt when they change.

Split (paper section 5.2 and the authors' code): the 1623 character folders of both archives are
shuffled with a fixed seed; the first 1200 are for meta-training, of which the last 100 are held out
for validation, and the remaining 423 are the meta-test characters. The authors shuffled the
`os.listdir` order with Python's `random.seed(1)`, which depends on the file system, so their exact
split cannot be recovered; we sort the names and permute them with `np.random.default_rng(SPLIT_SEED)`,
SPLIT_SEED = 1, and return the character lists so that experiments record them.

Rotations by 0, 90, 180 and 270 degrees (counter-clockwise, `np.rot90`, the same as
`tf.image.rot90`) turn each character of a split into 4 classes of its own: class `r * C + c` is
character `c` rotated by `rotations[r]`; train has 1100*4, validation 100*4 and test 423*4 classes.
Each class knows its character (`class_groups`). Tasks drawn from the classes independently can hold
two rotations of one character (in 20-way tasks: 29% of test tasks, 79% of validation tasks, 12% of
training tasks; in 5-way tasks 1.8%, 7.4% and 0.7%). The authors' code instead draws N distinct
characters and a random rotation for each, so that never happens: `split.sampler(...,
distinct_groups=True)`, the experiments' `--distinct_characters`.

    splits = load_omniglot_splits("/path/to/omniglot")
    sampler = splits.train.sampler(num_ways=5, num_shots=1)     # query = 1 per class, as in training
    episodes = sampler.sample(32, np.random.default_rng(0))
    splits.characters["test"]                                   # the 423 test character names
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import shutil
import stat
import tempfile
import time
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from data import cache
from data.episodes import ImageClasses, default_cache_dir, default_data_dir

__all__ = [
    "ARCHIVES",
    "OMNIGLOT_URL",
    "SPLIT_SEED",
    "OmniglotData",
    "OmniglotSplits",
    "load_omniglot",
    "load_omniglot_splits",
    "split_characters",
    "split_omniglot",
]

log = logging.getLogger(__name__)

ARCHIVES = ("images_background", "images_evaluation")
OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{name}.zip"
MANUAL_URL = "https://github.com/brendenlake/omniglot/tree/master/python"
SPLIT_SEED = 1
RESIZE_MODES = ("authors", "lanczos")
_CACHE_VERSION = 1
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, UnidentifiedImageError,
                ValueError, NotImplementedError)


@dataclasses.dataclass(frozen=True, eq=False)
class OmniglotData:
    """All characters: images uint8 [num_characters, drawings, S, S, 1] (strokes 255, background 0)
    and names like "images_background/Latin/character01", sorted."""

    images: np.ndarray
    character_names: tuple
    cache_path: Path | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class OmniglotSplits:
    """The meta-train / validation / meta-test splits, ready to sample, and the split itself."""

    train: ImageClasses
    val: ImageClasses
    test: ImageClasses
    characters: dict  # split name -> list of character names (before rotation)
    seed: int
    rotations: tuple

    def __getitem__(self, split: str) -> ImageClasses:
        if split not in ("train", "val", "test"):
            raise KeyError(f"unknown Omniglot split {split!r}; use 'train', 'val' or 'test'.")
        return getattr(self, split)

    def to_json(self) -> dict:
        """The split as plain data, for results files."""
        return {"seed": self.seed, "rotations": list(self.rotations),
                "characters": {k: list(v) for k, v in self.characters.items()}}


# --------------------------------------------------------------------------------------------------
# Finding (or downloading) the archives


def _locate_sources(folders: Iterable[Path]) -> dict[str, Path]:
    """For each archive name, the first `<folder>/<name>.zip` or `<folder>/<name>/` that exists."""
    found = {}
    for name in ARCHIVES:
        for folder in folders:
            for candidate in (folder / f"{name}.zip", folder / name):
                if name not in found and (candidate.is_file() or candidate.is_dir()):
                    found[name] = candidate
    return found


def _is_writable_dir(folder: Path, create: bool = False) -> bool:
    """Whether to write into `folder`. A folder whose mode has no write bit counts as read-only even
    for root (who could write anyway), so shared read-only data folders are left untouched."""
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return False
    if not folder.is_dir():
        return False
    if not folder.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        return False
    return os.access(folder, os.W_OK)


def _download(name: str, target_dir: Path, timeout: float) -> Path:
    url = OMNIGLOT_URL.format(name=name)
    target = target_dir / f"{name}.zip"
    target_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=f".{name}.", suffix=".part")
    try:
        log.info("downloading %s", url)
        with urllib.request.urlopen(url, timeout=timeout) as response, os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(response, out)
        with zipfile.ZipFile(tmp) as archive:
            bad = archive.testzip()
        if bad is not None:
            raise zipfile.BadZipFile(f"bad CRC in {bad}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def _find_or_download(data_dir: Path, cache_dir: Path, download: bool, timeout: float) -> dict:
    download_dir = cache_dir / "omniglot"
    sources = _locate_sources([data_dir, download_dir])
    missing = [name for name in ARCHIVES if name not in sources]
    if not missing:
        return sources
    how = (f"download {' and '.join(f'{m}.zip' for m in missing)} from {MANUAL_URL} into {data_dir} "
           f"(or pass the folder holding them as data_dir, --data_dir in the experiments)")
    if not download:
        raise FileNotFoundError(
            f"Omniglot not found: {data_dir} holds no {' or '.join(f'{m}.zip' for m in missing)} "
            f"(nor the unpacked folders); {how}.")
    existing = {f: next(p for p in (f, *f.parents) if p.exists()) for f in (data_dir, download_dir)}
    target_dir = data_dir if _is_writable_dir(data_dir, create=True) else download_dir
    for name in missing:
        try:
            sources[name] = _download(name, target_dir, timeout)
        except Exception as err:  # no network, HTTP error, truncated file, ...
            for folder, ancestor in existing.items():  # leave behind no empty folder that this call made
                while folder != ancestor and folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
                    folder = folder.parent
            raise FileNotFoundError(
                f"Omniglot not found in {data_dir} and downloading {OMNIGLOT_URL.format(name=name)} "
                f"failed ({type(err).__name__}: {err}); {how}.") from err
    return sources


# --------------------------------------------------------------------------------------------------
# Reading and resizing


def _resize(png: bytes, image_size: int, resize: str) -> np.ndarray:
    """One drawing -> uint8 [S, S], strokes 255, background 0."""
    image = Image.open(io.BytesIO(png))
    if resize == "authors":
        # As the authors' resize_images.py: PIL on the image as opened (mode "1" -> nearest neighbour).
        image = image.resize((image_size, image_size), resample=Image.Resampling.LANCZOS)
        grey = image.convert("L")
    else:
        grey = image.convert("L").resize((image_size, image_size), resample=Image.Resampling.LANCZOS)
    return 255 - np.asarray(grey, dtype=np.uint8)


def _character_key(relative_path: str) -> tuple[str, str] | None:
    """'images_background/Latin/character01/0001_01.png' -> ('images_background/Latin/character01',
    '0001_01.png'); None for anything that is not a drawing in that layout."""
    parts = relative_path.replace("\\", "/").strip("/").split("/")
    if len(parts) != 4 or not parts[3].lower().endswith(".png") or parts[3].startswith("."):
        return None
    if parts[0] not in ARCHIVES or parts[1].startswith("__MACOSX"):
        return None
    return "/".join(parts[:3]), parts[3]


def _read_source(name: str, source: Path) -> dict[str, dict[str, callable]]:
    """character name -> {drawing file name: function returning its PNG bytes}."""
    characters: dict[str, dict] = {}
    if source.is_file():
        try:
            archive = zipfile.ZipFile(source)
            members = archive.namelist()
        except _READ_ERRORS as err:
            raise ValueError(
                f"{source} is not a readable zip archive ({type(err).__name__}: {err}); delete it and "
                f"download it again from {MANUAL_URL}.") from err
        for member in members:
            key = _character_key(member)
            if key is not None:
                characters.setdefault(key[0], {})[key[1]] = (
                    lambda m=member, a=archive: a.read(m))
    else:
        for path in source.rglob("*.png"):
            key = _character_key(f"{name}/{path.relative_to(source).as_posix()}")
            if key is not None:
                characters.setdefault(key[0], {})[key[1]] = path.read_bytes
    if not characters:
        raise ValueError(
            f"{source} holds no drawings in the layout {name}/<alphabet>/<character>/<drawing>.png; "
            f"get the original archive from {MANUAL_URL}.")
    return characters


def _fingerprint(sources: dict[str, Path]) -> str:
    digest = hashlib.sha256()
    for name in ARCHIVES:
        source = sources[name]
        digest.update(name.encode())
        if source.is_file():
            with open(source, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        else:
            for path in sorted(source.rglob("*.png")):
                digest.update(f"{path.relative_to(source).as_posix()}:{path.stat().st_size}".encode())
    return digest.hexdigest()


def _build(sources: dict[str, Path], image_size: int, resize: str) -> tuple[np.ndarray, tuple]:
    characters = {}
    for name in ARCHIVES:
        characters.update(_read_source(name, sources[name]))
    names = tuple(sorted(characters))
    counts = {len(characters[c]) for c in names}
    if len(counts) != 1:
        fewest = min(names, key=lambda c: len(characters[c]))
        raise ValueError(
            f"Omniglot characters must all have the same number of drawings, but {fewest} has "
            f"{len(characters[fewest])} and others have {max(counts)}; the archives look incomplete.")
    drawings = counts.pop()
    images = np.empty((len(names), drawings, image_size, image_size, 1), dtype=np.uint8)
    for i, character in enumerate(names):
        files = characters[character]
        for j, drawing in enumerate(sorted(files)):
            try:
                images[i, j, :, :, 0] = _resize(files[drawing](), image_size, resize)
            except _READ_ERRORS as err:
                archive = character.split("/")[0]
                raise ValueError(
                    f"cannot read Omniglot drawing {character}/{drawing} from {sources[archive]} "
                    f"({type(err).__name__}: {err}); the file is corrupt, get it again from "
                    f"{MANUAL_URL}.") from err
    return images, names


# --------------------------------------------------------------------------------------------------
# Public API


def load_omniglot(
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: int = 28,
    resize: str = "authors",
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    download: bool = True,
    download_timeout: float = 60.0,
) -> OmniglotData:
    """All 1623 Omniglot characters x 20 drawings, resized, as uint8 (strokes 255, background 0).

    Args:
      data_dir: folder holding images_background.zip and images_evaluation.zip (or those folders
        unpacked); default `default_data_dir("omniglot")` ($MAML_TF_DATA_DIR/omniglot, else
        <repo>/../shared/data/omniglot).
      image_size: side of the square images (28 in the paper).
      resize: "authors" (PIL on the 1-bit image: nearest neighbour, binary result, as the authors'
        script) or "lanczos" (greyscale Lanczos, anti-aliased).
      cache_dir: where to cache when data_dir is not writable (and where downloads go in that case);
        default `default_cache_dir()`.
      use_cache: read/write the .npz cache; False always rebuilds and writes nothing.
      download: try the canonical source when the archives are missing.
      download_timeout: the download's socket timeout in seconds (how long one network read may stall).

    Raises:
      FileNotFoundError: archives missing (and not downloadable); the message says how to get them.
      ValueError: an archive is corrupt or not in the Omniglot layout.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}.")
    data_dir = Path(data_dir if data_dir is not None else default_data_dir("omniglot")).expanduser()
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    sources = _find_or_download(data_dir, cache_dir, download, download_timeout)
    cache_name = f"omniglot_{image_size}x{image_size}_{resize}.npz"
    fingerprint = _fingerprint(sources) if use_cache else ""

    if use_cache:
        for candidate in (data_dir / cache_name, cache_dir / cache_name):
            cached = cache.read(candidate, fingerprint, _CACHE_VERSION, "Omniglot")
            if cached is not None:
                return OmniglotData(images=cached["images"], character_names=tuple(str(n) for n in cached["names"]),
                                    cache_path=candidate)

    start = time.perf_counter()
    images, names = _build(sources, image_size, resize)
    log.info("Omniglot: %d characters x %d drawings resized to %dx%d in %.1f s", images.shape[0],
             images.shape[1], image_size, image_size, time.perf_counter() - start)
    cache_path = None
    if use_cache:
        cache_path = _write_cache(images, names, fingerprint, cache_name, [data_dir, cache_dir])
    return OmniglotData(images=images, character_names=names, cache_path=cache_path)


def _write_cache(images, names, fingerprint, cache_name, folders: Sequence[Path]) -> Path | None:
    """Cache in the first writable folder (the data folder, else the cache folder); its path or None."""
    for i, folder in enumerate(folders):
        if _is_writable_dir(folder, create=i > 0) and cache.write(
                folder / cache_name, {"images": images, "names": np.array(names)}, fingerprint, _CACHE_VERSION,
                "Omniglot"):
            return folder / cache_name
    return None


def split_characters(character_names: Sequence[str], *, seed: int = SPLIT_SEED,
                     num_train: int = 1200, num_val: int = 100) -> dict[str, list[str]]:
    """The fixed seeded split of character names: {"train", "val", "test"} -> names.

    Sorted names are permuted with np.random.default_rng(seed); the first num_train - num_val are
    meta-train, the next num_val validation (both inside the paper's 1200 meta-training characters),
    the rest meta-test.
    """
    names = sorted(character_names)
    if not 0 <= num_val <= num_train <= len(names):
        raise ValueError(
            f"need 0 <= num_val <= num_train <= {len(names)} characters, got num_train={num_train} "
            f"and num_val={num_val}.")
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[i] for i in order]
    cut = num_train - num_val
    return {"train": shuffled[:cut], "val": shuffled[cut:num_train], "test": shuffled[num_train:]}


def split_omniglot(data: OmniglotData, *, seed: int = SPLIT_SEED, num_train: int = 1200,
                   num_val: int = 100, rotations: Sequence[int] = (0, 90, 180, 270)) -> OmniglotSplits:
    """Splits the characters and adds rotated copies as classes of their own (see module docstring)."""
    rotations = tuple(int(r) for r in rotations)
    if not rotations or any(r % 90 for r in rotations) or len({r % 360 for r in rotations}) != len(rotations):
        raise ValueError(f"rotations must be distinct multiples of 90 degrees, got {rotations}.")
    characters = split_characters(data.character_names, seed=seed, num_train=num_train,
                                  num_val=num_val)
    index = {name: i for i, name in enumerate(data.character_names)}
    parts = {}
    for split, names in characters.items():
        base = data.images[[index[n] for n in names]]  # [C, E, H, W, 1]
        images = np.concatenate([np.rot90(base, k=(r // 90) % 4, axes=(2, 3)) for r in rotations])
        class_names = tuple(f"{n}/rot{r}" for r in rotations for n in names)
        parts[split] = ImageClasses(images=np.ascontiguousarray(images), class_names=class_names,
                                    name=f"Omniglot ({split})", class_noun="character",
                                    example_noun="drawings",
                                    class_groups=tuple(c for _ in rotations for c in range(len(names))))
    return OmniglotSplits(train=parts["train"], val=parts["val"], test=parts["test"],
                          characters=characters, seed=seed, rotations=rotations)


def load_omniglot_splits(data_dir: str | os.PathLike | None = None, *, seed: int = SPLIT_SEED,
                         num_train: int = 1200, num_val: int = 100,
                         rotations: Sequence[int] = (0, 90, 180, 270), **load_kwargs) -> OmniglotSplits:
    """`load_omniglot(data_dir, **load_kwargs)` then `split_omniglot(...)`: the ready-to-sample splits."""
    return split_omniglot(load_omniglot(data_dir, **load_kwargs), seed=seed, num_train=num_train,
                          num_val=num_val, rotations=rotations)
