"""Train / valid / test splits (seeded 8:1:1, stratified or plain, or from a split file) and the meta query set.

Splits depend only on (post ids, labels, seed, ratios): posts are ordered by id before the seeded shuffle, so the
same set read in another order splits the same way. The query set is a fraction of the training split, drawn
(stratified by label) among posts that carry text and image labels and have both a text and an image.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ctmwa_batch.errors import DatasetError
from ctmwa_batch.schema import SPLITS
from ctmwa_training.datasets.common import id_lines

logger = logging.getLogger(__name__)

TRAIN, VALID, TEST = SPLITS
_SPLIT_WORDS = {
    "train": TRAIN,
    "training": TRAIN,
    "valid": VALID,
    "val": VALID,
    "validation": VALID,
    "dev": VALID,
    "test": TEST,
    "testing": TEST,
}


@dataclass(frozen=True)
class SplitConfig:
    """How posts are split and how the query set is drawn."""

    # Seed of the split and query draws (the reference training seed by default).
    seed: int = 1111
    # train:valid:test proportions, as integers.
    ratios: tuple[int, int, int] = (8, 1, 1)
    # Keep each class's proportions in every split (within two posts); False: one shuffle of all posts.
    stratify: bool = True
    # Query set size as a fraction of the training split.
    query_fraction: float = 0.1
    # CSV/TSV of `id,split` to use instead of drawing splits; posts it does not list are left out (and counted).
    split_file: str | None = None

    def __post_init__(self) -> None:
        if len(self.ratios) != 3 or any(r < 0 for r in self.ratios) or self.ratios[0] <= 0:
            raise ValueError(f"ratios must be three non-negative integers with train > 0, not {self.ratios}")
        if not 0.0 <= self.query_fraction <= 1.0:
            raise ValueError(f"query_fraction must be in [0, 1], not {self.query_fraction}")


@dataclass
class SplitReport:
    """Posts per split and class, the query set, and what a split file did not cover."""

    source: str  # "seeded" or the split file's path
    seed: int
    per_split: dict[str, int] = field(default_factory=dict)  # split -> posts
    per_split_class: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> posts
    query: int = 0  # posts in the query set
    query_eligible: int = 0  # training posts that could serve in the query set
    query_target: int = 0  # max(1, round(query_fraction * training posts)); 0 when query_fraction is 0
    not_in_split_file: int = 0  # posts the split file does not list (left out)
    unknown_in_split_file: int = 0  # split file ids that are not among the posts (e.g. dropped by label cleaning)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class Assignment:
    """Per post (in input order): its split (None: left out) and whether it is in the query set."""

    split: list[str | None]
    query: list[bool]
    report: SplitReport


def allocate(n: int, ratios: tuple[int, ...]) -> list[int]:
    """Which part (index into ratios) each of n consecutive positions goes to, keeping every prefix in proportion.

    Greedy: position i goes to the part furthest behind its quota (i + 1) * r / sum(r); ties go to the earlier part.
    Every part ends within one of n * r / sum(r); when those are whole numbers, exactly at them.
    """
    total = sum(ratios)
    counts = [0] * len(ratios)
    out = []
    for i in range(n):
        deficits = [(i + 1) * r - c * total for r, c in zip(ratios, counts, strict=True)]
        part = max(range(len(ratios)), key=lambda k: (deficits[k], -k))
        counts[part] += 1
        out.append(part)
    return out


def seeded_splits(post_ids: list[str], labels: list[int], config: SplitConfig) -> list[str]:
    """Split names per post: a seeded shuffle, then `allocate` over the posts grouped by class (stratified) or not."""
    order = _seeded_order(post_ids, config.seed)  # position in the shuffle, per post
    rank = np.empty(len(post_ids), dtype=np.int64)
    rank[order] = np.arange(len(post_ids))
    if config.stratify:
        sequence = sorted(range(len(post_ids)), key=lambda i: (labels[i], rank[i]))
    else:
        sequence = list(order)
    parts = allocate(len(sequence), config.ratios)
    out: list[str] = [TRAIN] * len(post_ids)
    for i, part in zip(sequence, parts, strict=True):
        out[i] = SPLITS[part]
    return out


def _seeded_order(post_ids: list[str], seed: int) -> list[int]:
    """Indices of the posts in a seeded random order that does not depend on the input order."""
    by_id = sorted(range(len(post_ids)), key=lambda i: post_ids[i])
    perm = np.random.default_rng(seed).permutation(len(post_ids))
    return [by_id[p] for p in perm]


def read_split_file(path: str | Path) -> dict[str, str]:
    """Read a CSV or TSV of `id,split` (optional header line; split names train|valid|test, or val/dev/validation)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"split file {path} not found; give --split-file a CSV or TSV of 'id,split' lines")
    out: dict[str, str] = {}
    lines = id_lines(
        path,
        fields=2,
        expected="'id,split'",
        is_header=lambda fields: len(fields) == 2 and fields[1].lower() not in _SPLIT_WORDS,  # e.g. "id,split"
        warn_no_header=False,
        split=lambda line: [x.strip() for x in line.split("\t" if "\t" in line else ",")],
        id_noun="id",
    )
    for line in lines:
        word = line.fields[1]
        split = _SPLIT_WORDS.get(word.lower())
        if split is None:
            raise DatasetError(
                f"{line.where}: unknown split {word!r} for id {line.post_id!r}; use one of train, valid, test"
            )
        out[line.post_id] = split
    if not out:
        raise DatasetError(f"split file {path} lists no posts")
    return out


def choose_query(
    eligible: list[int], labels: list[int], n_train: int, fraction: float, seed: int
) -> tuple[list[int], int]:
    """Indices of the query posts among `eligible`, stratified by label, and the target size.

    Target: round(fraction * n_train), at least 1 when fraction > 0 (the rounding the training reader uses, so it
    keeps exactly the rows marked here); at most all eligible. Posts are ordered by (label, seeded rank) and
    picked at evenly spaced positions, so classes keep their shares.
    """
    target = max(1, round(fraction * n_train)) if fraction > 0 and n_train > 0 else 0
    k = min(target, len(eligible))
    if k == 0:
        return [], target
    rng = np.random.default_rng([seed, 1])  # an independent stream from the split draw
    rank = rng.permutation(len(eligible))
    ordered = sorted(range(len(eligible)), key=lambda j: (labels[eligible[j]], rank[j]))
    n = len(ordered)
    picked = [eligible[ordered[math.floor((j + 0.5) * n / k)]] for j in range(k)]
    return sorted(picked), target


def assign(
    post_ids: list[str],
    labels: list[int],
    query_ok: list[bool],
    class_names: list[str],
    config: SplitConfig,
) -> Assignment:
    """Splits and query flags for every post. `query_ok`: the post may serve in the query set (labels, content)."""
    n = len(post_ids)
    if config.split_file is not None:
        mapping = read_split_file(config.split_file)
        split: list[str | None] = [mapping.get(p) for p in post_ids]
        report = SplitReport(source=str(config.split_file), seed=config.seed)
        report.not_in_split_file = sum(s is None for s in split)
        report.unknown_in_split_file = len(set(mapping) - set(post_ids))
        if report.not_in_split_file:
            missing = [p for p, s in zip(post_ids, split, strict=True) if s is None]
            logger.warning(
                "%d post(s) are not in the split file and are left out (e.g. %s)", report.not_in_split_file, missing[:5]
            )
        if report.unknown_in_split_file:
            logger.warning(
                "%d id(s) of the split file are not among the posts (dropped by cleaning, or another set?)",
                report.unknown_in_split_file,
            )
    else:
        split = list(seeded_splits(post_ids, labels, config))
        report = SplitReport(source="seeded", seed=config.seed)
    train = [i for i in range(n) if split[i] == TRAIN]
    eligible = [i for i in train if query_ok[i]]
    picked, target = choose_query(eligible, labels, len(train), config.query_fraction, config.seed)
    query = [False] * n
    for i in picked:
        query[i] = True
    report.query, report.query_eligible, report.query_target = len(picked), len(eligible), target
    if len(picked) < target:
        logger.warning(
            "query set: %d post(s) wanted (%.0f%% of %d training posts), only %d eligible",
            target,
            100 * config.query_fraction,
            len(train),
            len(eligible),
        )
    counts = Counter((s, labels[i]) for i, s in enumerate(split) if s is not None)
    report.per_split = {s: sum(counts[(s, c)] for c in range(len(class_names))) for s in SPLITS}
    report.per_split_class = {s: {name: counts[(s, c)] for c, name in enumerate(class_names)} for s in SPLITS}
    if any(report.per_split[s] == 0 for s in SPLITS) and n:
        logger.warning("empty split(s): %s", report.per_split)
    return Assignment(split, query, report)
