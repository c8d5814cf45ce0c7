"""TumEmo as distributed: `all_data_id_and_label.txt` (a header, then `ID LABEL` per line) and `data/ID.txt|jpg`.

TumEmo has no text or image labels: t_label and v_label are null and the report says `unimodal_labels=False`, so
training uses the multimodal label for all three heads in the query step (DESIGN.md section 3).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ctmwa_batch.errors import DatasetError
from ctmwa_training.datasets.common import (
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

TUMEMO_LABELS = ("angry", "bored", "calm", "fear", "happy", "love", "sad")
LABEL_FILE = "all_data_id_and_label.txt"
DATA_DIR = "data"
_WORDS = {name: i for i, name in enumerate(TUMEMO_LABELS)}


def read_tumemo(root: str | Path, options: ReadOptions = ReadOptions()) -> PostsRead:
    """Read a TumEmo folder into a posts table (t_label, v_label null) and a report."""
    return read_all(tumemo_source(root, options))


def tumemo_source(
    root: str | Path, options: ReadOptions = ReadOptions(), progress: Callable[[ReadReport], None] | None = None
) -> PostsSource:
    """Parse the label file now (errors surface before any image is read); read content lazily."""
    root = Path(root)
    label_path = root / LABEL_FILE
    if not label_path.is_file():
        raise DatasetError(
            f"{label_path} not found; --root must be the TumEmo folder that holds {LABEL_FILE} and {DATA_DIR}/"
        )
    files = find_files(root / DATA_DIR)
    report = ReadReport(dataset="tumemo", source=str(root), labels=list(TUMEMO_LABELS), unimodal_labels=False)
    posts: list[RawPost] = []
    ids: set[str] = set()
    data_dir = root / DATA_DIR
    lines = id_lines(
        label_path,
        fields=2,
        expected="'ID LABEL' (two fields separated by whitespace)",
        # The header is skipped; a first line that reads as a post (ID and a known label) is kept.
        is_header=lambda fields: not (len(fields) == 2 and fields[1].lower() in _WORDS),
    )
    for line in lines:
        ids.add(line.post_id)
        label = label_index(line.fields[1], _WORDS, line.where)
        report.read += 1
        posts.append(
            RawPost(
                post_id=line.post_id,
                label=label,
                text_path=files.get(f"{line.post_id}.txt".lower(), data_dir / f"{line.post_id}.txt"),
                image_path=image_for(files, line.post_id) or data_dir / f"{line.post_id}.jpg",
            )
        )
    count_unlabelled(files, ids, report)
    logger.info("%s: %d posts labelled", label_path, report.read)
    return PostsSource(report, build_posts(posts, report, options, progress))
