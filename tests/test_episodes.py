"""Tests of the N-way K-shot episode sampler (data/episodes.py)."""

import numpy as np
import pytest

from data.episodes import EpisodeSampler, Episodes, ImageClasses


def coded_images(num_classes=12, per_class=10, size=2):
    """float images whose pixels all equal 1000 * class + example, so a sampled image names its source."""
    codes = 1000 * np.arange(num_classes)[:, None] + np.arange(per_class)[None, :]
    return np.broadcast_to(codes[:, :, None, None, None].astype(np.float32),
                           (num_classes, per_class, size, size, 1)).copy()


def decode(inputs):
    codes = inputs[..., 0, 0, 0].astype(np.int64)
    return codes // 1000, codes % 1000  # class, example


def test_shapes_dtypes_and_labels():
    sampler = EpisodeSampler(coded_images(size=3), num_ways=5, num_shots=2, num_query=3)
    episodes = sampler.sample(4, np.random.default_rng(0))
    assert isinstance(episodes, Episodes)
    assert episodes.support_inputs.shape == (4, 10, 3, 3, 1)
    assert episodes.query_inputs.shape == (4, 15, 3, 3, 1)
    assert episodes.support_inputs.dtype == np.float32
    assert episodes.support_labels.dtype == np.int32 and episodes.query_labels.dtype == np.int32
    np.testing.assert_array_equal(episodes.support_labels, np.tile(np.repeat(np.arange(5), 2), (4, 1)))
    np.testing.assert_array_equal(episodes.query_labels, np.tile(np.repeat(np.arange(5), 3), (4, 1)))
    assert episodes.support[0] is episodes.support_inputs and episodes.support[1] is episodes.support_labels
    assert episodes.query[0] is episodes.query_inputs and episodes.query[1] is episodes.query_labels
    assert len(episodes) == 4  # still the four arrays when unpacked


def test_query_defaults_to_shots():
    sampler = EpisodeSampler(coded_images(), num_ways=3, num_shots=4)
    assert sampler.num_query == 4
    episodes = sampler.sample(2, np.random.default_rng(0))
    assert episodes.query_inputs.shape[1] == 12


def test_labels_name_one_class_and_support_query_are_disjoint():
    sampler = EpisodeSampler(coded_images(num_classes=8, per_class=10), num_ways=5, num_shots=3,
                             num_query=7)  # 3 + 7 uses every example of a class
    episodes = sampler.sample(50, np.random.default_rng(1))
    s_class, s_example = decode(episodes.support_inputs)
    q_class, q_example = decode(episodes.query_inputs)
    for t in range(50):
        classes = []
        for label in range(5):
            sc = s_class[t][episodes.support_labels[t] == label]
            qc = q_class[t][episodes.query_labels[t] == label]
            assert len(set(sc)) == 1 and set(qc) == set(sc)  # one class per label, same in both sets
            classes.append(sc[0])
            se = s_example[t][episodes.support_labels[t] == label]
            qe = q_example[t][episodes.query_labels[t] == label]
            assert len(set(se)) == 3 and len(set(qe)) == 7  # examples without replacement
            assert not set(se) & set(qe)  # support and query disjoint
        assert len(set(classes)) == 5  # classes without replacement


def test_class_to_label_assignment_is_random_and_all_classes_used():
    sampler = EpisodeSampler(coded_images(num_classes=6), num_ways=3, num_shots=1)
    idx = sampler.sample_indices(600, np.random.default_rng(2))
    assert set(np.unique(idx.classes)) == set(range(6))
    for label in range(3):  # every class shows up under every label, about equally often
        counts = np.bincount(idx.classes[:, label], minlength=6)
        assert counts.min() > 60
    assert (np.sort(idx.classes, axis=1)[:, 1:] != np.sort(idx.classes, axis=1)[:, :-1]).all()


def test_seed_reproducibility():
    sampler = EpisodeSampler(coded_images(), num_ways=5, num_shots=1, num_query=2)
    a = sampler.sample(8, np.random.default_rng(123))
    b = sampler.sample(8, np.random.default_rng(123))
    c = sampler.sample(8, np.random.default_rng(124))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.support_inputs, c.support_inputs)
    rng = np.random.default_rng(5)  # successive calls advance the generator
    assert not np.array_equal(sampler.sample(8, rng).query_inputs, sampler.sample(8, rng).query_inputs)


def test_uint8_images_are_scaled_to_unit_interval():
    images = np.zeros((4, 5, 2, 2, 1), dtype=np.uint8)
    images[:, :, 0, 0, 0] = 255
    episodes = EpisodeSampler(images, num_ways=2, num_shots=1).sample(3, np.random.default_rng(0))
    assert episodes.support_inputs.dtype == np.float32
    assert episodes.support_inputs.max() == 1.0 and episodes.support_inputs.min() == 0.0
    custom = EpisodeSampler(images, 2, 1, scale=1.0, dtype=np.float64).sample(1, np.random.default_rng(0))
    assert custom.support_inputs.dtype == np.float64 and custom.support_inputs.max() == 255.0


def test_ragged_classes():
    per_class = [3, 7, 4, 10]
    images = [np.full((n, 2, 2, 1), 1000 * c, np.float32) + np.arange(n)[:, None, None, None]
              for c, n in enumerate(per_class)]
    sampler = EpisodeSampler(images, num_ways=3, num_shots=1, num_query=2)
    np.testing.assert_array_equal(sampler.examples_per_class, per_class)
    episodes = sampler.sample(200, np.random.default_rng(0))
    for inputs in (episodes.support_inputs, episodes.query_inputs):
        cls, ex = decode(inputs)
        assert (ex < np.array(per_class)[cls]).all()  # never past the end of a smaller class
    idx = sampler.sample_indices(200, np.random.default_rng(0))
    both = np.concatenate([idx.support_examples, idx.query_examples], axis=2)
    assert (np.sort(both, axis=2)[..., 1:] != np.sort(both, axis=2)[..., :-1]).all()
    assert both[idx.classes == 0].max() == 2  # the 3-example class: all three get used


def test_too_many_ways():
    with pytest.raises(ValueError, match=r"^20-way tasks need 20 character classes but Omniglot "
                                         r"has only 12\.$"):
        EpisodeSampler(coded_images(), 20, 1, name="Omniglot", class_noun="character")


def test_too_many_shots_plus_queries():
    images = coded_images(per_class=20)
    message = r"^5-shot with 16 query examples needs 21 drawings per character but Omniglot has 20\.$"
    with pytest.raises(ValueError, match=message):
        EpisodeSampler(images, 5, 5, 16, name="Omniglot", class_noun="character", example_noun="drawings")
    EpisodeSampler(images, 5, 5, 15)  # exactly 20 is fine
    ragged = [np.zeros((n, 2, 2, 1)) for n in (30, 8)]
    with pytest.raises(ValueError, match="has 8 in its smallest class"):
        EpisodeSampler(ragged, 2, 5, 5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_ways=0, num_shots=1), "num_ways must be an integer >= 1"),
    (dict(num_ways=2, num_shots=0), "num_shots must be an integer >= 1"),
    (dict(num_ways=2, num_shots=1, num_query=-1), "num_query must be an integer >= 0"),
    (dict(num_ways=2.0, num_shots=1), "num_ways must be an integer"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EpisodeSampler(coded_images(), **kwargs)


def test_bad_sample_calls_and_inputs():
    sampler = EpisodeSampler(coded_images(), 2, 1)
    with pytest.raises(ValueError, match="num_tasks must be an integer >= 1"):
        sampler.sample(0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng must be a numpy.random.Generator"):
        sampler.sample(1, np.random.RandomState(0))
    with pytest.raises(ValueError, match="one shape and dtype"):
        EpisodeSampler([np.zeros((5, 2, 2, 1)), np.zeros((5, 3, 3, 1))], 2, 1)
    with pytest.raises(ValueError, match="at least one class"):
        EpisodeSampler([], 1, 1)


def test_zero_query():
    episodes = EpisodeSampler(coded_images(), 3, 2, num_query=0).sample(2, np.random.default_rng(0))
    assert episodes.query_inputs.shape == (2, 0, 2, 2, 1) and episodes.query_labels.shape == (2, 0)


def test_image_classes_sampler_words_errors_with_its_nouns():
    split = ImageClasses(images=coded_images(per_class=20), class_names=tuple(map(str, range(12))),
                         name="Omniglot (train)", class_noun="character", example_noun="drawings")
    assert split.num_classes == 12
    assert split.sampler(5, 1).sample(1, np.random.default_rng(0)).support_inputs.shape[1] == 5
    with pytest.raises(ValueError, match="21 drawings per character but Omniglot \\(train\\) has 20"):
        split.sampler(5, 5, 16)
    with pytest.raises(ValueError, match="12 classes of images but 3 names"):
        ImageClasses(images=coded_images(), class_names=("a", "b", "c"))


def test_class_groups_give_distinct_groups_and_uniform_members():
    # 12 classes in 4 groups of 3, listed interleaved like Omniglot's rotations (class r*4 + c in group c)
    groups = np.tile(np.arange(4), 3)
    sampler = EpisodeSampler(coded_images(12, 4), num_ways=4, num_shots=1, num_query=1, class_groups=groups)
    idx = sampler.sample_indices(3000, np.random.default_rng(0))
    task_groups = groups[idx.classes]
    assert all(len(set(row)) == 4 for row in task_groups)  # never two classes of one group
    counts = np.bincount(idx.classes.ravel(), minlength=12)  # each class equally often: 1000 each
    assert np.all(np.abs(counts - 1000) < 4 * np.sqrt(1000))
    # the labels still get their groups in random order
    assert np.all(np.abs(np.bincount(task_groups[:, 0], minlength=4) - 750) < 4 * np.sqrt(750))
    # and the images are those of the drawn classes
    episodes = sampler.sample(5, np.random.default_rng(1))
    again = sampler.sample_indices(5, np.random.default_rng(1))
    cls, _ = decode(episodes.support_inputs)
    np.testing.assert_array_equal(cls, again.classes)
    # without groups, two classes of one group do meet (P = 1 - 9*6*3/(11*10*9) ~ 0.51 per task)
    plain = EpisodeSampler(coded_images(12, 4), num_ways=4, num_shots=1, num_query=1)
    plain_groups = groups[plain.sample_indices(200, np.random.default_rng(0)).classes]
    assert any(len(set(row)) < 4 for row in plain_groups)


def test_class_groups_of_unequal_sizes_and_bad_groups():
    groups = np.array([7, 7, 7, 3, 9, 9])  # group sizes 3, 1, 2
    sampler = EpisodeSampler(coded_images(6, 2), num_ways=3, num_shots=1, num_query=0, class_groups=groups)
    classes = sampler.sample_indices(6000, np.random.default_rng(0)).classes
    assert all(sorted(groups[row]) == [3, 7, 9] for row in classes)
    counts = np.bincount(classes.ravel(), minlength=6)
    expected = 6000 * np.array([1 / 3, 1 / 3, 1 / 3, 1, 1 / 2, 1 / 2])
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
    with pytest.raises(ValueError, match="4-way tasks of distinct characters need 4 characters but toy has only 3"):
        EpisodeSampler(coded_images(6, 2), num_ways=4, num_shots=1, class_groups=groups, name="toy",
                       class_noun="character")
    with pytest.raises(ValueError, match="class_groups must be 6 integers"):
        EpisodeSampler(coded_images(6, 2), num_ways=2, num_shots=1, class_groups=[0, 1])
    plain = ImageClasses(images=coded_images(6, 2), class_names=tuple("abcdef"), name="toy")
    with pytest.raises(ValueError, match="toy has no class groups"):
        plain.sampler(2, 1, distinct_groups=True)
    grouped = ImageClasses(images=coded_images(6, 2), class_names=tuple("abcdef"), class_groups=tuple(groups))
    picked = grouped.sampler(3, 1, distinct_groups=True).sample_indices(1, np.random.default_rng(0))
    assert picked.classes.shape == (1, 3)
