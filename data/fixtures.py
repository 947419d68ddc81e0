"""Small synthetic data sets in the real on-disk formats, for tests and end-to-end pipeline runs.

`make_omniglot_fixture(root)` writes images_background.zip and images_evaluation.zip with the
layout of the canonical archives (`images_background/<Alphabet>/characterNN/IIII_DD.png`, 105x105
1-bit PNGs, black strokes on white); every character is a few random strokes, redrawn with jitter
for each drawer, so characters are distinguishable and not symmetric under rotation.

`make_miniimagenet_fixture(root)` writes `images/*.jpg` (real JPEGs of several sizes, one of them
greyscale, so loading exercises resizing and RGB conversion) and train/val/test.csv in the exact
Ravi & Larochelle format (`filename,label` header, `n0153282900000005.jpg,n01532829` rows).

Both are deterministic given `seed` and take well under a second.
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["make_miniimagenet_fixture", "make_omniglot_fixture"]

DEFAULT_ALPHABETS = {
    "images_background": ("Alphabet_of_Tests", "Fixture_(Latin)"),
    "images_evaluation": ("Synthetic_Script",),
}


def _character_strokes(rng: np.random.Generator, num_strokes: int = 3) -> list[np.ndarray]:
    """A character prototype: a few polylines of 3-4 points in a 105x105 canvas."""
    return [rng.uniform(15, 90, size=(rng.integers(3, 5), 2)) for _ in range(num_strokes)]


def _draw(strokes, rng: np.random.Generator, size: int, jitter: float) -> bytes:
    image = Image.new("1", (size, size), color=1)  # white background, as in Omniglot
    draw = ImageDraw.Draw(image)
    scale = size / 105.0
    for stroke in strokes:
        points = (stroke + rng.normal(0.0, jitter, stroke.shape)) * scale
        draw.line([tuple(p) for p in points], fill=0, width=max(1, round(6 * scale)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_omniglot_fixture(
    root: str | Path,
    *,
    alphabets: Mapping[str, Sequence[str]] = DEFAULT_ALPHABETS,
    characters_per_alphabet: int = 3,
    drawings: int = 20,
    image_size: int = 105,
    as_zip: bool = True,
    seed: int = 0,
) -> Path:
    """Writes a tiny Omniglot in the canonical layout into `root` (zips, or unpacked folders when
    as_zip=False) and returns `root`. Character ids IIII run 0001.. across both archives, as in the
    real data; drawers DD run 01..drawings."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    character_id = 0
    for archive, names in alphabets.items():
        files: dict[str, bytes] = {}
        for alphabet in names:
            for c in range(1, characters_per_alphabet + 1):
                character_id += 1
                strokes = _character_strokes(rng)
                for drawer in range(1, drawings + 1):
                    path = f"{archive}/{alphabet}/character{c:02d}/{character_id:04d}_{drawer:02d}.png"
                    files[path] = _draw(strokes, rng, image_size, jitter=2.0)
        if as_zip:
            with zipfile.ZipFile(root / f"{archive}.zip", "w", zipfile.ZIP_DEFLATED) as z:
                folders = sorted({p.rsplit("/", i)[0] + "/" for p in files for i in (1, 2, 3)})
                for folder in folders:  # directory entries, as in the real archives
                    z.writestr(folder, b"")
                for path, data in files.items():
                    z.writestr(path, data)
        else:
            for path, data in files.items():
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).write_bytes(data)
    return root


def make_miniimagenet_fixture(
    root: str | Path,
    *,
    classes_per_split: Mapping[str, int] | None = None,
    images_per_class: int = 12,
    sizes: Sequence[tuple[int, int]] = ((84, 84), (100, 120), (64, 50)),
    csv_location: str = "root",
    seed: int = 0,
) -> Path:
    """Writes a tiny mini-ImageNet into `root` and returns `root`.

    Args:
      classes_per_split: e.g. {"train": 6, "val": 3, "test": 3} (the default).
      images_per_class: JPEGs per class.
      sizes: (width, height) cycled over the images; anything but 84x84 exercises resizing.
      csv_location: "root" writes <root>/{split}.csv; "ravi" writes <root>/splits/ravi/{split}.csv.
    Every class has a distinct mean colour, so a classifier can tell classes apart. The first image
    of each split is saved as a greyscale JPEG.
    """
    if csv_location not in ("root", "ravi"):
        raise ValueError(f"csv_location must be 'root' or 'ravi', got {csv_location!r}.")
    classes_per_split = classes_per_split or {"train": 6, "val": 3, "test": 3}
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    csv_dir = root if csv_location == "root" else root / "splits" / "ravi"
    csv_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    wnid = 1000000
    count = 0
    for split, num_classes in classes_per_split.items():
        rows = []
        for _ in range(num_classes):
            wnid += 1
            label = f"n{wnid:08d}"
            colour = rng.uniform(40, 215, size=3)
            for i in range(images_per_class):
                width, height = sizes[count % len(sizes)]
                count += 1
                noise = rng.normal(0, 25, size=(height, width, 3))
                pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels, "RGB")
                if i == 0 and not rows:
                    image = image.convert("L")
                filename = f"{label}{i + 1:08d}.jpg"
                image.save(root / "images" / filename, format="JPEG", quality=90)
                rows.append((filename, label))
        with open(csv_dir / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["filename", "label"])
            writer.writerows(rows)
    return root
