"""Tests of the Omniglot loader (data/omniglot.py): on a synthetic archive in the canonical layout,
and on the real archives when they are present (<repo>/../shared/data/omniglot, or
$MAML_TF_DATA_DIR/omniglot)."""

import io
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import data.omniglot as omniglot
from data.episodes import default_data_dir
from data.fixtures import make_omniglot_fixture
from data.omniglot import load_omniglot, load_omniglot_splits, split_characters, split_omniglot


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    return make_omniglot_fixture(tmp_path_factory.mktemp("omniglot_fixture"))


@pytest.fixture
def fresh_fixture(tmp_path):
    return make_omniglot_fixture(tmp_path / "omniglot")


def test_fixture_layout_matches_the_real_archives(fixture_dir):
    with zipfile.ZipFile(fixture_dir / "images_background.zip") as z:
        pngs = [n for n in z.namelist() if n.endswith(".png")]
        assert "images_background/Alphabet_of_Tests/character01/0001_01.png" in pngs
        image = Image.open(io.BytesIO(z.read(pngs[0])))
        assert image.mode == "1" and image.size == (105, 105)


def test_load_from_zips(fixture_dir, tmp_path):
    data = load_omniglot(fixture_dir, cache_dir=tmp_path, use_cache=False, download=False)
    assert data.images.shape == (9, 20, 28, 28, 1) and data.images.dtype == np.uint8
    assert data.character_names == tuple(sorted(data.character_names))
    assert data.character_names[0] == "images_background/Alphabet_of_Tests/character01"
    assert data.character_names[-1] == "images_evaluation/Synthetic_Script/character03"
    assert set(np.unique(data.images)) == {0, 255}  # authors' resize of 1-bit PNGs is binary
    # strokes 1 (255), background 0: most pixels, and the borders, are background
    assert 0.02 < (data.images > 0).mean() < 0.4
    assert data.images[:, :, 0, :].max() == 0


def test_authors_resize_is_pil_on_the_1bit_image(fixture_dir, tmp_path):
    data = load_omniglot(fixture_dir, cache_dir=tmp_path, use_cache=False, download=False)
    with zipfile.ZipFile(fixture_dir / "images_evaluation.zip") as z:
        png = z.read("images_evaluation/Synthetic_Script/character02/0008_05.png")
    expected = Image.open(io.BytesIO(png)).resize((28, 28), resample=Image.LANCZOS)
    expected = 255 - np.asarray(expected.convert("L"))
    index = data.character_names.index("images_evaluation/Synthetic_Script/character02")
    np.testing.assert_array_equal(data.images[index, 4, :, :, 0], expected)


def test_lanczos_resize_is_greyscale_and_close(fixture_dir, tmp_path):
    binary = load_omniglot(fixture_dir, use_cache=False, download=False).images
    grey = load_omniglot(fixture_dir, resize="lanczos", use_cache=False, download=False).images
    assert len(np.unique(grey)) > 10
    assert np.mean((grey > 127) == (binary > 127)) > 0.95
    with pytest.raises(ValueError, match="resize must be one of"):
        load_omniglot(fixture_dir, resize="bicubic", download=False)


def test_unpacked_folders_equal_zips(fixture_dir, tmp_path):
    folders = make_omniglot_fixture(tmp_path / "unpacked", as_zip=False)
    assert (folders / "images_background" / "Alphabet_of_Tests" / "character01").is_dir()
    a = load_omniglot(fixture_dir, use_cache=False, download=False)
    b = load_omniglot(folders, use_cache=False, download=False)
    assert a.character_names == b.character_names
    np.testing.assert_array_equal(a.images, b.images)


def test_cache_round_trip(fresh_fixture, tmp_path, monkeypatch):
    first = load_omniglot(fresh_fixture, cache_dir=tmp_path / "cache", download=False)
    assert first.cache_path == fresh_fixture / "omniglot_28x28_authors.npz"  # writable: next to data
    assert first.cache_path.is_file()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(omniglot, "_build", no_rebuild)
    second = load_omniglot(fresh_fixture, cache_dir=tmp_path / "cache", download=False)
    np.testing.assert_array_equal(first.images, second.images)
    assert first.character_names == second.character_names
    monkeypatch.undo()

    make_omniglot_fixture(fresh_fixture, seed=1)  # new archives: the fingerprint changes, rebuild
    third = load_omniglot(fresh_fixture, cache_dir=tmp_path / "cache", download=False)
    assert not np.array_equal(first.images, third.images)


def test_read_only_data_dir_caches_in_cache_dir(tmp_path):
    data_dir = make_omniglot_fixture(tmp_path / "readonly")
    data_dir.chmod(0o555)
    try:
        data = load_omniglot(data_dir, cache_dir=tmp_path / "cache", download=False)
        assert data.cache_path == tmp_path / "cache" / "omniglot_28x28_authors.npz"
        assert sorted(p.name for p in data_dir.iterdir()) == ["images_background.zip",
                                                              "images_evaluation.zip"]
    finally:
        data_dir.chmod(0o755)


def test_no_cache_writes_nothing(fresh_fixture, tmp_path):
    data = load_omniglot(fresh_fixture, cache_dir=tmp_path / "cache", use_cache=False, download=False)
    assert data.cache_path is None
    assert not list(fresh_fixture.glob("*.npz")) and not (tmp_path / "cache").exists()


def test_missing_dir_says_how_to_get_the_data(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        load_omniglot(missing, cache_dir=tmp_path / "cache", download=False)
    message = str(info.value)
    assert message.startswith(f"Omniglot not found: {missing} holds no images_background.zip")
    assert "github.com/brendenlake/omniglot" in message and "\n" not in message
    assert message.endswith(".") and message.count(". ") == 0


def test_failed_download_says_how_to_get_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr(omniglot, "OMNIGLOT_URL", f"file://{tmp_path}/no_such_dir/{{name}}.zip")
    with pytest.raises(FileNotFoundError, match=r"^Omniglot not found in .* and downloading "
                                                r"file://.*images_background\.zip failed \(.*\); "
                                                r"download images_background\.zip and "
                                                r"images_evaluation\.zip from https://github\.com"):
        load_omniglot(tmp_path / "a" / "data", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "a").exists()  # the folders it made for the download are gone again
    (tmp_path / "b").mkdir()
    with pytest.raises(FileNotFoundError):
        load_omniglot(tmp_path / "b", cache_dir=tmp_path / "cache")
    assert (tmp_path / "b").is_dir()  # one that was there stays


def test_download_from_the_canonical_source(fixture_dir, tmp_path, monkeypatch):
    # The real source is raw.githubusercontent.com; a file:// URL stands in for it offline.
    monkeypatch.setattr(omniglot, "OMNIGLOT_URL", f"file://{fixture_dir}/{{name}}.zip")
    data = load_omniglot(tmp_path / "data", cache_dir=tmp_path / "cache")
    assert (tmp_path / "data" / "images_background.zip").is_file()
    assert data.images.shape == (9, 20, 28, 28, 1)


def test_corrupt_zip(fixture_dir, tmp_path):
    shutil.copy(fixture_dir / "images_evaluation.zip", tmp_path)
    (tmp_path / "images_background.zip").write_bytes(b"this is not a zip file" * 100)
    with pytest.raises(ValueError, match=r"images_background\.zip is not a readable zip archive "
                                         r"\(BadZipFile: .*\); delete it and download it again from"):
        load_omniglot(tmp_path, use_cache=False, download=False)


def test_corrupt_drawing_inside_a_valid_zip(fixture_dir, tmp_path):
    shutil.copy(fixture_dir / "images_evaluation.zip", tmp_path)
    with zipfile.ZipFile(fixture_dir / "images_background.zip") as src, \
            zipfile.ZipFile(tmp_path / "images_background.zip", "w") as dst:
        for name in src.namelist():
            dst.writestr(name, b"garbage" if name.endswith("0002_03.png") else src.read(name))
    with pytest.raises(ValueError, match=r"cannot read Omniglot drawing .*character02/0002_03\.png"):
        load_omniglot(tmp_path, use_cache=False, download=False)


def test_incomplete_character(tmp_path):
    root = make_omniglot_fixture(tmp_path, as_zip=False)
    next(root.glob("images_background/*/character02/*.png")).unlink()
    with pytest.raises(ValueError, match="same number of drawings.*has 19 and others have 20"):
        load_omniglot(root, use_cache=False, download=False)


def test_split_characters_is_fixed_disjoint_and_seeded():
    names = [f"a/c{i:04d}" for i in range(1623)]
    split = split_characters(list(reversed(names)))
    assert [len(split[k]) for k in ("train", "val", "test")] == [1100, 100, 423]
    assert set(split["train"]) | set(split["val"]) | set(split["test"]) == set(names)
    assert split == split_characters(names)  # independent of the input order
    assert split != split_characters(names, seed=2)
    with pytest.raises(ValueError, match="num_val <= num_train"):
        split_characters(names, num_train=2000)


def test_split_and_rotations(fixture_dir):
    data = load_omniglot(fixture_dir, use_cache=False, download=False)
    splits = split_omniglot(data, num_train=7, num_val=2)
    assert {k: len(v) for k, v in splits.characters.items()} == {"train": 5, "val": 2, "test": 2}
    for name, n in (("train", 5), ("val", 2), ("test", 2)):
        part = splits[name]
        assert part.images.shape == (4 * n, 20, 28, 28, 1) and part.num_classes == 4 * n
        chars = splits.characters[name]
        for c, character in enumerate(chars):
            original = data.images[data.character_names.index(character)]
            np.testing.assert_array_equal(part.images[c], original)
            for r in range(1, 4):
                np.testing.assert_array_equal(part.images[c + r * n],
                                              np.rot90(part.images[c], k=r, axes=(1, 2)))
                assert part.class_names[c + r * n] == f"{character}/rot{90 * r}"
                assert part.class_groups[c + r * n] == part.class_groups[c] == c  # group = character
        # the authors' tasks: N distinct characters, each at a random rotation
        classes = part.sampler(n, 1, distinct_groups=True).sample_indices(50, np.random.default_rng(0)).classes
        assert all(sorted(row % n) == list(range(n)) for row in classes)
    assert splits.to_json()["characters"]["test"] == splits.characters["test"]
    assert split_omniglot(data, num_train=7, num_val=2, rotations=(0,)).train.num_classes == 5
    with pytest.raises(ValueError, match="multiples of 90"):
        split_omniglot(data, num_train=7, num_val=2, rotations=(0, 45))
    with pytest.raises(KeyError, match="unknown Omniglot split"):
        splits["validation"]


def test_sampling_from_a_split(fixture_dir):
    splits = load_omniglot_splits(fixture_dir, num_train=7, num_val=2, use_cache=False, download=False)
    episodes = splits.train.sampler(5, 1).sample(3, np.random.default_rng(0))
    assert episodes.support_inputs.shape == (3, 5, 28, 28, 1)
    assert set(np.unique(episodes.support_inputs)) <= {0.0, 1.0}
    with pytest.raises(ValueError, match=r"^5-shot with 16 query examples needs 21 drawings per "
                                         r"character but Omniglot \(train\) has 20\.$"):
        splits.train.sampler(5, 5, 16)


# --------------------------------------------------------------------------------------------------
# The real data

REAL_DIR = default_data_dir("omniglot")
needs_real_data = pytest.mark.skipif(
    not all((REAL_DIR / f"{n}.zip").is_file() or (REAL_DIR / n).is_dir() for n in omniglot.ARCHIVES),
    reason=f"the real Omniglot archives are not in {REAL_DIR} (set MAML_TF_DATA_DIR to the folder "
           f"holding omniglot/images_background.zip and images_evaluation.zip)")


@pytest.fixture(scope="module")
def real_splits():
    # Default cache dir ($MAML_TF_CACHE_DIR or ~/.cache/maml_tf): about 10 s the first time, then ~0.1 s.
    return load_omniglot_splits(REAL_DIR, download=False)


@needs_real_data
def test_real_omniglot(real_splits):
    characters = real_splits.characters
    all_names = characters["train"] + characters["val"] + characters["test"]
    assert len(all_names) == len(set(all_names)) == 1623
    assert sum(n.startswith("images_background/") for n in all_names) == 964
    assert [len(characters[k]) for k in ("train", "val", "test")] == [1100, 100, 423]
    assert real_splits.train.images.shape == (4400, 20, 28, 28, 1)
    assert real_splits.val.images.shape == (400, 20, 28, 28, 1)
    assert real_splits.test.images.shape == (1692, 20, 28, 28, 1)
    test = real_splits.test.images
    for c in (0, 200, 422):
        for r in (1, 2, 3):
            np.testing.assert_array_equal(test[c + 423 * r], np.rot90(test[c], k=r, axes=(1, 2)))
    assert 0.03 < (test[:423] > 0).mean() < 0.2  # strokes 1 on background 0
    assert real_splits.seed == omniglot.SPLIT_SEED == 1


@needs_real_data
def test_real_omniglot_cache_is_not_written_into_a_read_only_data_dir():
    data = load_omniglot(REAL_DIR, download=False)
    assert data.images.shape == (1623, 20, 28, 28, 1)
    if not os.stat(REAL_DIR).st_mode & 0o222:
        assert data.cache_path is None or Path(REAL_DIR) not in data.cache_path.parents
        assert not list(Path(REAL_DIR).glob("*.npz"))
