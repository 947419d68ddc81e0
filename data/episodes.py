"""N-way K-shot episodes drawn from images held in memory, shared by all image data sets.

A *task* (episode) is built as in the MAML paper (section 5.2): draw N classes without replacement,
give them the labels 0..N-1 in a random order, then draw K support and Q query examples per class,
all distinct (support and query never share an example). The paper trains with Q = K (the authors'
code draws K + K examples per class); MiniImagenet uses Q = 15.

    sampler = EpisodeSampler(images, num_ways=5, num_shots=1)       # images: [C, E, H, W, Ch]
    episodes = sampler.sample(32, np.random.default_rng(0))
    episodes.support_inputs   # [32, 5*1, H, W, Ch] float32
    episodes.support_labels   # [32, 5*1] int32, in 0..4
    episodes.query_inputs     # [32, 5*1, H, W, Ch]
    episodes.query_labels     # [32, 5*1]

Within a task the examples are laid out class by class: label 0's K examples, then label 1's, ...
(labels = [0]*K + [1]*K + ...). The *class* behind each label is random, so this order carries no
information; MAML with batch statistics is invariant to the order of examples anyway.

Images are gathered from one flat array with vectorised numpy indexing: drawing classes and
examples costs one argsort of random keys per meta-batch, no Python loop per task or example.

This module also holds the two small helpers the loaders share: where caches go, and where the
data lives by default.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

__all__ = [
    "Episodes",
    "EpisodeIndices",
    "EpisodeSampler",
    "ImageClasses",
    "default_cache_dir",
    "default_data_dir",
]

CACHE_ENV_VAR = "MAML_TF_CACHE_DIR"
DATA_ENV_VAR = "MAML_TF_DATA_DIR"


class Episodes(NamedTuple):
    """A batch of tasks; axis 0 indexes the task."""

    support_inputs: np.ndarray  # [T, N*K, H, W, C] float
    support_labels: np.ndarray  # [T, N*K] int32
    query_inputs: np.ndarray  # [T, N*Q, H, W, C] float
    query_labels: np.ndarray  # [T, N*Q] int32

    @property
    def support(self) -> tuple:
        """``(support_inputs, support_labels)``, the support set as the library's task losses take it."""
        return self.support_inputs, self.support_labels

    @property
    def query(self) -> tuple:
        """``(query_inputs, query_labels)``."""
        return self.query_inputs, self.query_labels


class EpisodeIndices(NamedTuple):
    """Which images a batch of tasks uses (for logging, tests and reproducibility checks)."""

    classes: np.ndarray  # [T, N] class index behind label 0..N-1
    support_examples: np.ndarray  # [T, N, K] example index within its class
    query_examples: np.ndarray  # [T, N, Q] example index within its class


class EpisodeSampler:
    """Draws N-way K-shot classification tasks from images grouped by class.

    Args:
      images: either one array [num_classes, examples_per_class, H, W, C] or a sequence of per-class
        arrays [examples_c, H, W, C] (class sizes may differ; image shapes may not).
      num_ways: N, classes per task.
      num_shots: K, support examples per class.
      num_query: Q, query examples per class; defaults to K (the authors' training setting).
      scale: multiplies the pixels when converting to `dtype`; defaults to 1/255 for uint8 images
        (so they come out in [0, 1]) and 1 otherwise.
      dtype: dtype of the returned inputs.
      class_groups: optional int array [num_classes]: classes with the same value belong to one
        group (for Omniglot, the rotated copies of one character). When given, a task draws N
        distinct groups and one class of each, uniformly among the group's classes, so no two
        classes of one group meet in a task (the authors' Omniglot tasks: N distinct characters,
        each at a random rotation). When None, classes are drawn independently of each other.
      name, class_noun, example_noun: only used to word error messages, e.g. "Omniglot",
        "character", "drawings".

    Raises:
      ValueError (one sentence) when the data cannot supply such tasks: more ways than classes, or
      more shots plus queries than examples in the smallest class.
    """

    def __init__(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        num_ways: int,
        num_shots: int,
        num_query: int | None = None,
        *,
        scale: float | None = None,
        dtype=np.float32,
        class_groups: np.ndarray | Sequence[int] | None = None,
        name: str = "the data set",
        class_noun: str = "class",
        example_noun: str = "examples",
    ):
        num_query = num_shots if num_query is None else num_query
        for arg, value, minimum in (("num_ways", num_ways, 1), ("num_shots", num_shots, 1),
                                    ("num_query", num_query, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"{arg} must be an integer >= {minimum}, got {value!r}.")
        self.num_ways = int(num_ways)
        self.num_shots = int(num_shots)
        self.num_query = int(num_query)
        self.name = name

        if isinstance(images, np.ndarray):
            if images.ndim < 3:
                raise ValueError(
                    f"images must have shape [classes, examples, ...image dims], got {images.shape}.")
            counts = np.full(images.shape[0], images.shape[1], dtype=np.int64)
            flat = images.reshape((-1,) + images.shape[2:])  # a view for contiguous arrays
        else:
            images = [np.asarray(x) for x in images]
            if not images:
                raise ValueError("images must hold at least one class.")
            shapes = {x.shape[1:] for x in images}
            dtypes = {x.dtype for x in images}
            if len(shapes) != 1 or len(dtypes) != 1:
                raise ValueError(
                    f"all classes must hold images of one shape and dtype, got shapes {sorted(shapes)} "
                    f"and dtypes {sorted(map(str, dtypes))}.")
            counts = np.array([len(x) for x in images], dtype=np.int64)
            flat = np.concatenate(images, axis=0)
        self._flat = flat
        self._counts = counts
        self._offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self._max_count = int(counts.max()) if len(counts) else 0
        self.num_classes = int(len(counts))
        self.image_shape = tuple(flat.shape[1:])
        self.dtype = np.dtype(dtype)
        if scale is None:
            scale = 1.0 / 255.0 if flat.dtype == np.uint8 else 1.0
        self.scale = float(scale)

        self._groups = None
        if class_groups is not None:
            class_groups = np.asarray(class_groups)
            if class_groups.shape != (self.num_classes,) or not np.issubdtype(class_groups.dtype, np.integer):
                raise ValueError(f"class_groups must be {self.num_classes} integers (one per class), got "
                                 f"shape {class_groups.shape} and dtype {class_groups.dtype}.")
            _, group_of_class = np.unique(class_groups, return_inverse=True)
            group_sizes = np.bincount(group_of_class)
            members = np.zeros((len(group_sizes), int(group_sizes.max())), dtype=np.int64)
            order = np.argsort(group_of_class, kind="stable")  # classes sorted by group
            position = np.arange(self.num_classes) - np.repeat(np.cumsum(group_sizes) - group_sizes, group_sizes)
            members[group_of_class[order], position] = order
            self._groups = (members, group_sizes)
            if self.num_ways > len(group_sizes):
                raise ValueError(
                    f"{self.num_ways}-way tasks of distinct {class_noun}s need {self.num_ways} {class_noun}s "
                    f"but {name} has only {len(group_sizes)}.")
        if self.num_ways > self.num_classes:
            raise ValueError(
                f"{self.num_ways}-way tasks need {self.num_ways} {class_noun} classes but {name} has "
                f"only {self.num_classes}.")
        need = self.num_shots + self.num_query
        smallest = int(counts.min())
        if need > smallest:
            raise ValueError(
                f"{self.num_shots}-shot with {self.num_query} query examples needs {need} {example_noun} "
                f"per {class_noun} but {name} has {smallest}"
                + (" in its smallest class." if len(set(counts.tolist())) > 1 else "."))

    @property
    def examples_per_class(self) -> np.ndarray:
        return self._counts.copy()

    def sample_indices(self, num_tasks: int, rng: np.random.Generator) -> EpisodeIndices:
        """Draws which classes and examples `num_tasks` tasks use, without building the images."""
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}.")
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, (int, np.integer)) or num_tasks < 1:
            raise ValueError(f"num_tasks must be an integer >= 1, got {num_tasks!r}.")
        n, k, q = self.num_ways, self.num_shots, self.num_query
        # The first N positions of a random permutation: N distinct classes in random order, so
        # class-to-label assignment is uniform.
        if self._groups is None:
            classes = np.argsort(rng.random((num_tasks, self.num_classes)), axis=1)[:, :n]
        else:  # N distinct groups in random order, then one class of each, uniformly
            members, sizes = self._groups
            groups = np.argsort(rng.random((num_tasks, len(sizes))), axis=1)[:, :n]
            pick = np.floor(rng.random((num_tasks, n)) * sizes[groups]).astype(np.int64)
            classes = members[groups, np.minimum(pick, sizes[groups] - 1)]
        # Per (task, class): the first K+Q positions of a random permutation of the class's examples.
        # Slots beyond a (smaller) class's size get key 2 > any uniform key, so they sort last.
        keys = rng.random((num_tasks, n, self._max_count))
        counts = self._counts[classes]  # [T, N]
        keys[np.arange(self._max_count) >= counts[..., None]] = 2.0
        examples = np.argsort(keys, axis=2)[..., : k + q]
        return EpisodeIndices(classes=classes, support_examples=examples[..., :k],
                              query_examples=examples[..., k:])

    def images_for(self, classes: np.ndarray, examples: np.ndarray) -> np.ndarray:
        """Images [T, N*M, H, W, C] (converted to `dtype`) for classes [T, N] and examples [T, N, M]."""
        flat_index = self._offsets[classes][..., None] + examples  # [T, N, M]
        t = flat_index.shape[0]
        out = self._flat[flat_index.reshape(-1)].astype(self.dtype, copy=False)
        if self.scale != 1.0:
            out *= self.dtype.type(self.scale)
        return out.reshape((t, -1) + self.image_shape)

    def sample(self, num_tasks: int, rng: np.random.Generator) -> Episodes:
        """Draws `num_tasks` tasks; the same rng state gives the same tasks."""
        idx = self.sample_indices(num_tasks, rng)
        n, k, q = self.num_ways, self.num_shots, self.num_query
        labels = np.arange(n, dtype=np.int32)
        return Episodes(
            support_inputs=self.images_for(idx.classes, idx.support_examples),
            support_labels=np.broadcast_to(np.repeat(labels, k), (num_tasks, n * k)).copy(),
            query_inputs=self.images_for(idx.classes, idx.query_examples),
            query_labels=np.broadcast_to(np.repeat(labels, q), (num_tasks, n * q)).copy(),
        )

    def __repr__(self) -> str:
        return (f"EpisodeSampler({self.name}: {self.num_classes} classes, {self.num_ways}-way "
                f"{self.num_shots}-shot, {self.num_query} query, images {self.image_shape})")


@dataclasses.dataclass(frozen=True, eq=False)
class ImageClasses:
    """One split of an image data set, ready to sample: images grouped by class, and their names.

    `images` is uint8 [num_classes, examples_per_class, H, W, C] (or a list of per-class arrays when
    class sizes differ); `class_names[i]` names class i.
    """

    images: np.ndarray | list
    class_names: tuple
    name: str = "the data set"
    class_noun: str = "class"
    example_noun: str = "examples"
    class_groups: tuple | None = None  # group of each class (e.g. its character), see EpisodeSampler

    def __post_init__(self):
        if len(self.images) != len(self.class_names):
            raise ValueError(
                f"{self.name}: {len(self.images)} classes of images but {len(self.class_names)} names.")
        if self.class_groups is not None and len(self.class_groups) != len(self.class_names):
            raise ValueError(
                f"{self.name}: {len(self.class_names)} classes but {len(self.class_groups)} class groups.")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def sampler(self, num_ways: int, num_shots: int, num_query: int | None = None, *,
                distinct_groups: bool = False, **kwargs) -> EpisodeSampler:
        """An EpisodeSampler over this split (kwargs go to EpisodeSampler); `distinct_groups=True`
        draws tasks of classes from distinct groups (`class_groups`, which must then be set)."""
        if distinct_groups:
            if self.class_groups is None:
                raise ValueError(f"{self.name} has no class groups, so tasks of distinct groups cannot be drawn.")
            kwargs["class_groups"] = np.asarray(self.class_groups)
        kwargs.setdefault("name", self.name)
        kwargs.setdefault("class_noun", self.class_noun)
        kwargs.setdefault("example_noun", self.example_noun)
        return EpisodeSampler(self.images, num_ways, num_shots, num_query, **kwargs)


def default_cache_dir() -> Path:
    """Where preprocessed arrays are cached: $MAML_TF_CACHE_DIR, else $XDG_CACHE_HOME/maml_tf,
    else ~/.cache/maml_tf."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "maml_tf"


def default_data_dir(dataset: str) -> Path:
    """Default folder of a data set: $MAML_TF_DATA_DIR/<dataset>, else <repo>/../shared/data/<dataset>."""
    if os.environ.get(DATA_ENV_VAR):
        return Path(os.environ[DATA_ENV_VAR]).expanduser() / dataset
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / dataset
