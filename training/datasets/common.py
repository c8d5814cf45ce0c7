"""What every raw-dataset reader shares: the posts table schema, the read report, text decoding, image checks.

A reader turns a labelled source into `RawPost`s (id, labels, where the text and image are); `build_posts` reads
their files, decodes text robustly, checks images, drops and counts what cannot be used, and yields Arrow record
batches of the posts table. Nothing is dropped without a count in the `ReadReport`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa

from ctmwa_batch.errors import DatasetError
from ctmwa_batch.model.preprocess import image_problem
from ctmwa_batch.schema import (
    DATASET_KEY,
    DEFAULT_IMAGE_COLUMN,
    DEFAULT_TEXT_COLUMN,
    LABEL,
    LABELLED_POSTS_SCHEMA,
    LABELS_KEY,
    POST_ID,
    T_LABEL,
    UNIMODAL_KEY,
    V_LABEL,
)

logger = logging.getLogger(__name__)

TEXT = DEFAULT_TEXT_COLUMN
IMAGE = DEFAULT_IMAGE_COLUMN

# The posts table every reader returns: the labelled posts of ctmwa_batch.schema.
POSTS_SCHEMA = LABELLED_POSTS_SCHEMA

# Schema metadata keys that carry the class names and whether t_label / v_label exist (DESIGN.md section 5).
META_LABELS = LABELS_KEY.encode()
META_UNIMODAL = UNIMODAL_KEY.encode()
META_DATASET = DATASET_KEY.encode()

# Reasons a labelled post is dropped (keys of ReadReport.dropped).
DROP_CONTRADICTION = "contradiction"  # MVSA: text positive with image negative or the reverse
DROP_NO_MAJORITY = "no_majority"  # MVSA-Multiple: fewer than 2 of 3 annotators agree on a modality
DROP_NO_CONTENT = "no_content"  # neither a usable text nor a readable image
DROP_MISSING_LABEL = "missing_label"  # generic: the label cell is empty

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class ReadOptions:
    """How readers treat text and image files (shared by every raw layout)."""

    # Encoding tried, byte by byte, for bytes that are not valid UTF-8 (tweets saved by Windows tools are cp1252);
    # None: such bytes become U+FFFD. Either way each such byte is counted in ReadReport.replaced_chars.
    text_fallback_encoding: str | None = "cp1252"
    # "decode": fully decode each image (catches truncated files); "open": read the header only; "none": trust files.
    check_images: str = "decode"
    # Threads reading and checking files (Pillow releases the GIL while decoding).
    workers: int = min(8, os.cpu_count() or 1)
    # Rows per Arrow record batch (images are held in memory one batch at a time).
    batch_rows: int = 256

    def __post_init__(self) -> None:
        if self.check_images not in ("decode", "open", "none"):
            raise ValueError(f"check_images must be 'decode', 'open' or 'none', not {self.check_images!r}")
        if self.workers < 1 or self.batch_rows < 1:
            raise ValueError(f"workers and batch_rows must be >= 1 (got {self.workers}, {self.batch_rows})")
        if self.text_fallback_encoding is not None:
            b"x".decode(self.text_fallback_encoding)  # LookupError now, not in the middle of a dataset


@dataclass
class ReadReport:
    """What a reader saw: counts that add up (read == kept + sum(dropped)) and a few example ids per problem."""

    dataset: str
    source: str
    labels: list[str]
    unimodal_labels: bool
    read: int = 0  # labelled posts (label lines or rows) read
    kept: int = 0  # posts in the posts table
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> posts dropped
    missing_texts: int = 0  # kept posts without a text file / value
    empty_texts: int = 0  # kept posts whose text is empty or whitespace only
    missing_images: int = 0  # kept posts without an image file / value
    unreadable_images: int = 0  # kept posts whose image is present but cannot be decoded (image set to null)
    replaced_chars: int = 0  # bytes that were not valid UTF-8 and were decoded by the fallback (or as U+FFFD)
    texts_with_replacements: int = 0  # kept posts with at least one replaced character
    unlabelled_files: int = 0  # posts found in the data folder that have no label line (not read)
    per_class: dict[str, int] = field(default_factory=dict)  # kept posts per class name, in class order
    examples: dict[str, list[str]] = field(default_factory=dict)  # problem -> first post ids that had it

    def __post_init__(self) -> None:
        if not self.per_class:
            self.per_class = {name: 0 for name in self.labels}

    def drop(self, reason: str, post_id: str) -> None:
        """Count one post dropped for `reason`."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.example(reason, post_id)

    def example(self, problem: str, post_id: str) -> None:
        """Remember `post_id` as an example of `problem` (the first few only)."""
        ids = self.examples.setdefault(problem, [])
        if len(ids) < MAX_EXAMPLES:
            ids.append(post_id)

    @property
    def dropped_total(self) -> int:
        """Posts read but not kept."""
        return sum(self.dropped.values())

    def to_dict(self) -> dict:
        """JSON-ready form."""
        out = asdict(self)
        out["dropped_total"] = self.dropped_total
        return out


@dataclass(frozen=True)
class RawPost:
    """One labelled post as a reader found it: labels already cleaned to class indices, content not yet read."""

    post_id: str
    label: int
    t_label: int | None = None
    v_label: int | None = None
    text_path: Path | None = None  # text file to read (None: see `text`)
    text: str | bytes | None = None  # text given inline (generic sources); bytes are decoded like files
    image_path: Path | None = None  # image file to read (None: see `image`)
    image: bytes | None = None  # image bytes given inline (generic sources)


@dataclass(frozen=True)
class _Content:
    """A post's text and image after reading, with what went wrong."""

    text: str | None
    image: bytes | None
    text_problem: str | None  # None, "missing_texts", "empty_texts" (the ReadReport counter to increment)
    image_problem: str | None  # None, "missing_images", "unreadable_images"
    replaced: int


def decode_text(raw: bytes, fallback: str | None = "cp1252") -> tuple[str, int]:
    """Decode bytes as UTF-8; each byte that is not valid UTF-8 is decoded alone with `fallback` (or U+FFFD).

    Returns the text and how many bytes needed the fallback. A UTF-8 byte order mark is removed.
    """
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    parts: list[str] = []
    replaced = 0
    pos = 0
    while pos < len(raw):
        try:
            parts.append(raw[pos:].decode("utf-8"))
            break
        except UnicodeDecodeError as e:
            parts.append(raw[pos : pos + e.start].decode("utf-8"))
            for byte in raw[pos + e.start : pos + e.end]:
                parts.append(_decode_byte(byte, fallback))
                replaced += 1
            pos += e.end
    return "".join(parts), replaced


def _decode_byte(byte: int, fallback: str | None) -> str:
    if fallback is None:
        return "\ufffd"
    try:
        return bytes([byte]).decode(fallback)
    except UnicodeDecodeError:
        return "\ufffd"  # e.g. 0x81, 0x8d, 0x8f, 0x90, 0x9d are undefined in cp1252


def check_image(data: bytes, mode: str = "decode") -> str | None:
    """None if the image bytes are usable, else a short reason: the runtime's own decoder decides (scoring and
    training agree on what an image is; Pillow's decompression-bomb limit stays on)."""
    if not data:
        return "empty file"
    if mode == "none":
        return None
    return image_problem(data, header_only=mode == "open")


@dataclass(frozen=True)
class IdLine:
    """One line of an id-keyed text file (label file, split file), checked by `id_lines`."""

    post_id: str  # the first field
    fields: list[str]  # every field, the id included
    where: str  # "path:line", for error messages


def id_lines(
    path: Path,
    *,
    fields: int,
    expected: str,
    is_header: Callable[[list[str]], bool],
    warn_no_header: bool = True,
    split: Callable[[str], list[str]] = str.split,
    id_noun: str = "post id",
) -> Iterator[IdLine]:
    """The lines of an id-keyed text file, one loop for every such file (MVSA and TumEmo labels, split files).

    Decodes UTF-8 (bad bytes replaced), skips blank lines, skips the first line when `is_header(fields)` (else
    logs that it is read as a post, with `warn_no_header`), requires `fields` non-empty-id fields per line (else a
    DatasetError: "expected {expected}, got LINE"), and rejects a duplicate id naming both lines.
    """
    line_of: dict[str, int] = {}
    with path.open("rb") as f:
        first = True
        for lineno, raw in enumerate(f, start=1):
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            parts = split(line)
            if first:
                first = False
                if is_header(parts):
                    continue
                if warn_no_header:
                    logger.warning("%s:%d is not a header line; reading it as a post", path, lineno)
            where = f"{path}:{lineno}"
            if len(parts) != fields or not parts[0]:
                raise DatasetError(f"{where}: expected {expected}, got {line!r}; fix or remove that line")
            post_id = parts[0]
            if post_id in line_of:
                raise DatasetError(
                    f"{where}: duplicate {id_noun} {post_id!r} (first on line {line_of[post_id]}); remove one of the two lines"
                )
            line_of[post_id] = lineno
            yield IdLine(post_id, parts, where)


def find_files(folder: Path) -> dict[str, Path]:
    """Map lower-cased file name -> path for one folder listing (one listdir instead of a stat per post)."""
    try:
        return {entry.name.lower(): Path(entry.path) for entry in os.scandir(folder) if entry.is_file()}
    except FileNotFoundError as e:
        raise DatasetError(f"data folder {folder} does not exist; point --root at the dataset folder") from e


def image_for(files: dict[str, Path], post_id: str) -> Path | None:
    """The image file of `post_id` in a folder listing (ID.jpg, or another common image extension)."""
    for ext in IMAGE_EXTENSIONS:
        path = files.get(f"{post_id}{ext}".lower())
        if path is not None:
            return path
    return None


def count_unlabelled(files: dict[str, Path], label_ids: set[str], report: ReadReport) -> None:
    """Count posts present in a data folder listing that no label line names (they are not read)."""
    lowered = {post_id.lower() for post_id in label_ids}
    unlabelled = sorted({name.rsplit(".", 1)[0] for name in files} - lowered)
    report.unlabelled_files = len(unlabelled)
    for post_id in unlabelled[:MAX_EXAMPLES]:
        report.example("unlabelled_files", post_id)
    if unlabelled:
        logger.warning(
            "%d post(s) in the data folder have no label line and are not read (e.g. %s)",
            len(unlabelled),
            unlabelled[:MAX_EXAMPLES],
        )


def read_content(post: RawPost, options: ReadOptions) -> _Content:
    """Read and check one post's text and image."""
    text: str | None = None
    text_problem: str | None = None
    replaced = 0
    raw_text: str | bytes | None = post.text
    if post.text_path is not None:
        try:
            raw_text = post.text_path.read_bytes()
        except FileNotFoundError:
            raw_text = None
        except OSError as e:  # permissions, a folder named ID.txt: the environment, not the data, is wrong
            raise DatasetError(
                f"{post.text_path}: cannot read the text file ({e}); fix its permissions or remove it"
            ) from e
    if raw_text is None:
        text_problem = "missing_texts"
    else:
        if isinstance(raw_text, bytes):
            raw_text, replaced = decode_text(raw_text, options.text_fallback_encoding)
        text = raw_text.strip()
        if not text:
            text, text_problem = None, "empty_texts"

    image = post.image
    image_problem: str | None = None
    if post.image_path is not None:
        try:
            image = post.image_path.read_bytes()
        except FileNotFoundError:
            image = None
        except OSError as e:
            logger.warning("cannot read image %s (%s); the post is kept without an image", post.image_path, e)
            image, image_problem = None, "unreadable_images"
    if image is None:
        image_problem = image_problem or "missing_images"
    else:
        reason = check_image(image, options.check_images)
        if reason is not None:
            where = post.image_path if post.image_path is not None else f"post {post.post_id}"
            logger.debug("unreadable image %s (%s); the post is kept without an image", where, reason)
            image, image_problem = None, "unreadable_images"
    return _Content(text, image, text_problem, image_problem, replaced)


def build_posts(
    posts: Iterable[RawPost],
    report: ReadReport,
    options: ReadOptions,
    progress: Callable[[ReadReport], None] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Read the content of `posts` and yield record batches of the posts table, counting everything in `report`.

    `report.read` and label-cleaning drops are the reader's to count; this counts content problems and kept posts.
    """
    names = report.labels
    with ThreadPoolExecutor(max_workers=options.workers) as pool:
        for chunk in _chunks(posts, options.batch_rows):
            contents = list(pool.map(lambda p: read_content(p, options), chunk))
            columns: dict[str, list] = {name: [] for name in POSTS_SCHEMA.names}
            for post, content in zip(chunk, contents, strict=True):
                if content.text is None and content.image is None:
                    report.drop(DROP_NO_CONTENT, post.post_id)
                    continue
                report.kept += 1
                report.per_class[names[post.label]] += 1
                for problem in (content.text_problem, content.image_problem):
                    if problem is not None:
                        setattr(report, problem, getattr(report, problem) + 1)
                        report.example(problem, post.post_id)
                if content.replaced:
                    report.replaced_chars += content.replaced
                    report.texts_with_replacements += 1
                    report.example("replaced_chars", post.post_id)
                columns[POST_ID].append(post.post_id)
                columns[TEXT].append(content.text)
                columns[IMAGE].append(content.image)
                columns[LABEL].append(post.label)
                columns[T_LABEL].append(post.t_label)
                columns[V_LABEL].append(post.v_label)
            if progress is not None:
                progress(report)
            if columns[POST_ID]:
                yield pa.RecordBatch.from_pydict(columns, schema=POSTS_SCHEMA)


def _chunks(items: Iterable[RawPost], size: int) -> Iterator[list[RawPost]]:
    chunk: list[RawPost] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def posts_metadata(report: ReadReport) -> dict[bytes, bytes]:
    """Schema metadata of a posts or features table: class names, whether unimodal labels exist, the source."""
    return {
        META_LABELS: json.dumps(list(report.labels)).encode(),
        META_UNIMODAL: b"true" if report.unimodal_labels else b"false",
        META_DATASET: report.dataset.encode(),
    }


@dataclass
class PostsSource:
    """A dataset being read: iterate `batches()` once (streaming); `report` is complete when it is exhausted."""

    report: ReadReport
    _batches: Iterator[pa.RecordBatch]

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Record batches of the posts table (POSTS_SCHEMA), read lazily."""
        return self._batches

    @property
    def schema(self) -> pa.Schema:
        """POSTS_SCHEMA with this dataset's label metadata."""
        return POSTS_SCHEMA.with_metadata(posts_metadata(self.report))


@dataclass(frozen=True)
class PostsRead:
    """A dataset read whole: the posts table (with label metadata) and the report."""

    table: pa.Table
    report: ReadReport


def read_all(source: PostsSource) -> PostsRead:
    """Materialise a PostsSource into one table (small and medium sets; prepare streams instead)."""
    table = pa.Table.from_batches(list(source.batches()), schema=source.schema)
    return PostsRead(table, source.report)


def label_index(word: str, labels: dict[str, int], where: str) -> int:
    """Class index of a label word (case-insensitive), or a DatasetError naming `where` and the accepted words."""
    index = labels.get(word.strip().lower())
    if index is None:
        raise DatasetError(
            f"{where}: unknown label {word!r}; expected one of {sorted(labels)}; fix or remove that line"
        )
    return index
