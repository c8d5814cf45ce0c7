"""TumEmo as distributed: `all_data_id_and_label.txt` (a header, then `ID LABEL` per line) and `data/ID.txt|jpg`.

TumEmo has no text or image labels: t_label and v_label are null and the report says `unimodal_labels=False`, so
training uses the multimodal label for all three heads in the query step (DESIGN.md section 3).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ctmwa_batch.errors import DatasetError
from training.datasets.common import (
    PostsRead,
    PostsSource,
    RawPost,
    ReadOptions,
    ReadReport,
    build_posts,
    count_unlabelled,
    find_files,
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
    line_of: dict[str, int] = {}
    data_dir = root / DATA_DIR
    with label_path.open("rb") as f:
        first = True
        for lineno, raw in enumerate(f, start=1):
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            fields = line.split()
            if first:
                first = False
                # The header is skipped; a first line that reads as a post (ID and a known label) is kept.
                if not (len(fields) == 2 and fields[1].lower() in _WORDS):
                    continue
                logger.warning("%s:%d is not a header line; reading it as a post", label_path, lineno)
            where = f"{label_path}:{lineno}"
            if len(fields) != 2:
                raise DatasetError(
                    f"{where}: expected 'ID LABEL' (two fields separated by whitespace), got {line!r}; "
                    "fix or remove that line"
                )
            post_id, word = fields
            if post_id in line_of:
                raise DatasetError(
                    f"{where}: duplicate post id {post_id!r} (first on line {line_of[post_id]}); "
                    "remove one of the two lines"
                )
            line_of[post_id] = lineno
            label = label_index(word, _WORDS, where)
            report.read += 1
            posts.append(
                RawPost(
                    post_id=post_id,
                    label=label,
                    text_path=files.get(f"{post_id}.txt".lower(), data_dir / f"{post_id}.txt"),
                    image_path=image_for(files, post_id) or data_dir / f"{post_id}.jpg",
                )
            )
    count_unlabelled(files, set(line_of), report)
    logger.info("%s: %d posts labelled", label_path, report.read)
    return PostsSource(report, build_posts(posts, report, options, progress))
