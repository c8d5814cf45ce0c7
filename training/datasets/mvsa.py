"""MVSA-Single and MVSA-Multiple as distributed: `data/ID.txt` + `data/ID.jpg` and `labelResultAll.txt`.

Label cleaning is the field's standard (DESIGN.md section 3): MVSA-Multiple first takes the per-modality majority
of its three annotators (no majority: dropped); text and image labels are then combined: equal -> that label, one
neutral and one polar -> the polar one, positive with negative -> dropped. Every drop is counted.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ctmwa_batch.errors import DatasetError
from ctmwa_training.datasets.common import (
    DROP_CONTRADICTION,
    DROP_NO_MAJORITY,
    PostsRead,
    PostsSource,
    RawPost,
    ReadOptions,
    ReadReport,
    build_posts,
    count_unlabelled,
    find_files,
    id_lines,
    image_for,
    label_index,
    read_all,
)

logger = logging.getLogger(__name__)

MVSA_LABELS = ("positive", "neutral", "negative")
POSITIVE, NEUTRAL, NEGATIVE = 0, 1, 2
LABEL_FILE = "labelResultAll.txt"
DATA_DIR = "data"
_WORDS = {name: i for i, name in enumerate(MVSA_LABELS)}


def majority(votes: list[int]) -> int | None:
    """The label at least 2 of 3 annotators gave, or None when all three differ."""
    label, count = Counter(votes).most_common(1)[0]
    return label if count * 2 > len(votes) else None


def combine(t_label: int, v_label: int) -> int | None:
    """Post label from text and image labels: equal -> it; neutral + polar -> polar; positive + negative -> None."""
    if t_label == v_label:
        return t_label
    if t_label == NEUTRAL:
        return v_label
    if v_label == NEUTRAL:
        return t_label
    return None


def read_mvsa_single(root: str | Path, options: ReadOptions = ReadOptions()) -> PostsRead:
    """Read an MVSA-Single folder into a posts table and a report."""
    return read_all(mvsa_source(root, annotators=1, options=options))


def read_mvsa_multiple(root: str | Path, options: ReadOptions = ReadOptions()) -> PostsRead:
    """Read an MVSA-Multiple folder (three annotators per post) into a posts table and a report."""
    return read_all(mvsa_source(root, annotators=3, options=options))


def mvsa_source(
    root: str | Path,
    annotators: int,
    options: ReadOptions = ReadOptions(),
    progress: Callable[[ReadReport], None] | None = None,
) -> PostsSource:
    """Parse the label file now (errors surface before any image is read); read content lazily."""
    root = Path(root)
    name = "mvsa-single" if annotators == 1 else "mvsa-multiple"
    label_path = root / LABEL_FILE
    if not label_path.is_file():
        raise DatasetError(
            f"{label_path} not found; --root must be the {name} folder that holds {LABEL_FILE} and {DATA_DIR}/"
        )
    files = find_files(root / DATA_DIR)
    report = ReadReport(dataset=name, source=str(root), labels=list(MVSA_LABELS), unimodal_labels=True)
    posts, label_ids = _parse_labels(label_path, annotators, root / DATA_DIR, files, report)
    count_unlabelled(files, label_ids, report)
    logger.info(
        "%s: %d label lines, %d posts after label cleaning (dropped: %s)",
        label_path,
        report.read,
        len(posts),
        report.dropped or "none",
    )
    return PostsSource(report, build_posts(posts, report, options, progress))


def _parse_labels(
    label_path: Path, annotators: int, data_dir: Path, files: dict[str, Path], report: ReadReport
) -> tuple[list[RawPost], set[str]]:
    """RawPosts that survive label cleaning, and every id the label file names."""
    posts: list[RawPost] = []
    ids: set[str] = set()
    lines = id_lines(
        label_path,
        fields=1 + annotators,
        expected=f"an ID and {annotators} 'text,image' label pair(s) separated by tabs",
        is_header=lambda fields: fields[0].lower() == "id",  # ID<TAB>text,image
    )
    for line in lines:
        ids.add(line.post_id)
        pairs = [_parse_pair(pair, line.where) for pair in line.fields[1:]]
        report.read += 1
        if annotators == 1:
            t_label, v_label = pairs[0]
        else:
            t_label = majority([t for t, _ in pairs])
            v_label = majority([v for _, v in pairs])
            if t_label is None or v_label is None:
                report.drop(DROP_NO_MAJORITY, line.post_id)
                continue
        label = combine(t_label, v_label)
        if label is None:
            report.drop(DROP_CONTRADICTION, line.post_id)
            continue
        posts.append(
            RawPost(
                post_id=line.post_id,
                label=label,
                t_label=t_label,
                v_label=v_label,
                text_path=files.get(f"{line.post_id}.txt".lower(), data_dir / f"{line.post_id}.txt"),
                image_path=image_for(files, line.post_id) or data_dir / f"{line.post_id}.jpg",
            )
        )
    return posts, ids


def _parse_pair(pair: str, where: str) -> tuple[int, int]:
    words = pair.split(",")
    if len(words) != 2:
        raise DatasetError(f"{where}: expected a 'text,image' label pair such as 'positive,neutral', got {pair!r}")
    return label_index(words[0], _WORDS, where), label_index(words[1], _WORDS, where)
