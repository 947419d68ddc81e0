"""Tests of the mini-ImageNet loader (data/miniimagenet.py) on a generated fixture in the real
on-disk format (the real images are not available here)."""

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

import data.miniimagenet as miniimagenet
from data.episodes import default_data_dir
from data.fixtures import make_miniimagenet_fixture
from data.miniimagenet import load_miniimagenet, load_miniimagenet_splits, read_split_csv


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    return make_miniimagenet_fixture(tmp_path_factory.mktemp("miniimagenet"))


def csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_fixture_format(fixture_dir):
    rows = csv_rows(fixture_dir / "train.csv")
    assert rows[0] == ["filename", "label"] and len(rows) == 1 + 6 * 12
    filename, label = rows[1]
    assert filename == f"{label}00000001.jpg" and len(label) == 9 and label.startswith("n")
    assert (fixture_dir / "train.csv").read_text().startswith("filename,label\nn")
    with Image.open(fixture_dir / "images" / rows[2][0]) as image:
        assert image.format == "JPEG" and image.size == (100, 120)


def test_load_all_splits(fixture_dir, tmp_path):
    splits = load_miniimagenet_splits(fixture_dir, cache_dir=tmp_path)
    expected = {"train": 6, "val": 3, "test": 3}
    for split, part in splits.items():
        assert part.images.shape == (expected[split], 12, 84, 84, 3)
        assert part.images.dtype == np.uint8
        labels = list(dict.fromkeys(row[1] for row in csv_rows(fixture_dir / f"{split}.csv")[1:]))
        assert list(part.class_names) == labels  # order of first appearance in the CSV
    names = [set(p.class_names) for p in splits.values()]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])


def test_pixels_resizing_and_colour_conversion(fixture_dir):
    train = load_miniimagenet(fixture_dir, "train", use_cache=False)
    rows = csv_rows(fixture_dir / "train.csv")[1:]
    # 3rd image of class 0 is already 84x84 (sizes cycle 84x84, 100x120, 64x50): stored unchanged
    with Image.open(fixture_dir / "images" / rows[3][0]) as image:
        assert image.size == (84, 84)
        np.testing.assert_array_equal(train.images[0, 3], np.asarray(image.convert("RGB")))
    # 2nd image is 100x120: resized with Lanczos, as the authors' proc_images.py
    with Image.open(fixture_dir / "images" / rows[1][0]) as image:
        expected = np.asarray(image.convert("RGB").resize((84, 84), resample=Image.LANCZOS))
    np.testing.assert_array_equal(train.images[0, 1], expected)
    # the first image was saved greyscale: three equal channels
    first = train.images[0, 0].astype(int)
    assert (first[..., 0] == first[..., 1]).all() and (first[..., 1] == first[..., 2]).all()


def test_sampling(fixture_dir, tmp_path):
    train = load_miniimagenet(fixture_dir, "train", cache_dir=tmp_path)
    episodes = train.sampler(num_ways=5, num_shots=1, num_query=5).sample(2, np.random.default_rng(0))
    assert episodes.support_inputs.shape == (2, 5, 84, 84, 3)
    assert episodes.query_inputs.shape == (2, 25, 84, 84, 3)
    assert 0.0 <= episodes.query_inputs.min() and episodes.query_inputs.max() <= 1.0
    with pytest.raises(ValueError, match=r"^1-shot with 15 query examples needs 16 images per class "
                                         r"but mini-ImageNet \(train\) has 12\.$"):
        train.sampler(5, 1, 15)


def test_cache_round_trip(fixture_dir, tmp_path, monkeypatch):
    first = load_miniimagenet(fixture_dir, "val", cache_dir=tmp_path)
    caches = list(tmp_path.glob("miniimagenet_val_84x84_*.npz"))
    assert len(caches) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(miniimagenet, "_load_image", no_decoding)
    second = load_miniimagenet(fixture_dir, "val", cache_dir=tmp_path)
    np.testing.assert_array_equal(first.images, second.images)
    assert first.class_names == second.class_names
    assert not list(fixture_dir.glob("*.npz"))  # nothing written next to the data


def test_cache_follows_the_csv(tmp_path):
    root = make_miniimagenet_fixture(tmp_path / "data", classes_per_split={"train": 3})
    load_miniimagenet(root, "train", cache_dir=tmp_path / "cache")
    rows = csv_rows(root / "train.csv")
    with open(root / "train.csv", "w", newline="") as f:  # drop two images of the last class
        csv.writer(f, lineterminator="\n").writerows(rows[:-2])
    ragged = load_miniimagenet(root, "train", cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    assert isinstance(ragged.images, list) and [len(x) for x in ragged.images] == [12, 12, 10]
    episodes = ragged.sampler(3, 2, 8).sample(2, np.random.default_rng(0))
    assert episodes.query_inputs.shape == (2, 24, 84, 84, 3)


def test_ravi_csv_layout_and_csv_dir(tmp_path):
    root = make_miniimagenet_fixture(tmp_path / "data", classes_per_split={"test": 2},
                                     csv_location="ravi")
    assert (root / "splits" / "ravi" / "test.csv").is_file()
    assert load_miniimagenet(root, "test", use_cache=False).images.shape == (2, 12, 84, 84, 3)
    assert miniimagenet.split_csv_path(root, "test") == (root / "splits" / "ravi" / "test.csv").resolve()
    moved = tmp_path / "csvs"
    shutil.copytree(root / "splits" / "ravi", moved)
    shutil.rmtree(root / "splits")
    assert load_miniimagenet(root, "test", csv_dir=moved, use_cache=False).num_classes == 2
    assert miniimagenet.split_csv_path(root, "test", csv_dir=moved) == (moved / "test.csv").resolve()
    with pytest.raises(FileNotFoundError, match="mini-ImageNet split file not found"):
        miniimagenet.split_csv_path(root, "test")


def test_authors_folder_layout(tmp_path):
    """Images sorted into <split>/<label>/ (the MAML authors' proc_images.py) instead of images/."""
    root = make_miniimagenet_fixture(tmp_path / "data", classes_per_split={"val": 2})
    reference = load_miniimagenet(root, "val", use_cache=False)
    for filename, label in csv_rows(root / "val.csv")[1:]:
        (root / "val" / label).mkdir(parents=True, exist_ok=True)
        (root / "images" / filename).rename(root / "val" / label / filename)
    moved = load_miniimagenet(root, "val", use_cache=False)
    np.testing.assert_array_equal(reference.images, moved.images)


def test_missing_images_say_how_to_get_mini_imagenet(tmp_path):
    root = make_miniimagenet_fixture(tmp_path / "data", classes_per_split={"train": 2})
    first = csv_rows(root / "train.csv")[1][0]
    (root / "images" / first).unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_miniimagenet(root, "train", use_cache=False)
    message = str(info.value)
    assert message.startswith(f"mini-ImageNet images not found: 1 of the 24 images listed in "
                              f"{root / 'train.csv'} are missing from {root / 'images'} (first: {first})")
    assert "cannot be downloaded automatically" in message and "meta-learning-lstm" in message
    assert "\n" not in message and message.endswith(".")


def test_missing_csv_and_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="mini-ImageNet split file not found: looked for "
                                                ".*train.csv.*cannot be downloaded automatically"):
        load_miniimagenet(tmp_path, "train")
    with pytest.raises(ValueError, match="split must be one of"):
        load_miniimagenet(tmp_path, "validation")
    (tmp_path / "val.csv").write_text("image,class\na.jpg,n1\n")
    with pytest.raises(ValueError, match="first line must be 'filename,label'"):
        load_miniimagenet(tmp_path, "val")


def test_corrupt_image(tmp_path):
    root = make_miniimagenet_fixture(tmp_path / "data", classes_per_split={"train": 2})
    name = csv_rows(root / "train.csv")[5][0]
    (root / "images" / name).write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=f"cannot read mini-ImageNet image .*{name}"):
        load_miniimagenet(root, "train", use_cache=False)


# --------------------------------------------------------------------------------------------------
# The real split files (the images themselves are not available on this machine)

REAL_DIR = default_data_dir("miniimagenet")
needs_real_csvs = pytest.mark.skipif(
    not (REAL_DIR / "splits" / "ravi" / "train.csv").is_file(),
    reason=f"the Ravi & Larochelle split files are not in {REAL_DIR}/splits/ravi (set "
           f"MAML_TF_DATA_DIR to the folder holding miniimagenet/)")


@needs_real_csvs
def test_real_split_files():
    sizes = {}
    for split in ("train", "val", "test"):
        classes = read_split_csv(REAL_DIR / "splits" / "ravi" / f"{split}.csv")
        assert {len(files) for _, files in classes} == {600}
        sizes[split] = len(classes)
    assert sizes == {"train": 64, "val": 16, "test": 20}


@needs_real_csvs
def test_real_split_files_without_images(tmp_path):
    if (REAL_DIR / "images").is_dir():
        pytest.skip("the mini-ImageNet images are present")
    with pytest.raises(FileNotFoundError, match=r"^mini-ImageNet images not found: 38400 of the "
                                                r"38400 images listed in .*; mini-ImageNet cannot be "
                                                r"downloaded automatically"):
        load_miniimagenet(REAL_DIR, "train", cache_dir=tmp_path)
