"""The one decode-and-encode loop: record batches of posts stream through five overlapped stages joined by bounded
queues, so memory stays flat whatever the input's size. `score` (ctmwa_batch.scoring.job) and `embed` (ctmwa_batch.scoring.embed)
both run on it; they differ only in their two steps and their sink.

    reader thread    record batches from the source (a shard's row groups, or a dataset); `prepare` (columns,
                     tokenization, no model); image URIs/paths handed to the fetcher (submit returns at once)
    fetcher          an asyncio loop in its own thread (ctmwa_batch.io.fetch): a bounded number of GETs in flight,
                     across the batches the reader has submitted
    fetch thread     waits for a batch's image bytes (at once when the column holds bytes), hands them to the decoder
    decoder          worker processes (or the fetch thread itself with workers=0): bytes -> uint8 pixels
    main thread      waits for a batch's pixels, runs `infer` (the encoders, and the head when scoring)
    writer thread    the sink: output batches -> Parquet, counts, progress
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ctmwa_batch.io import storage
from ctmwa_batch.io.fetch import Fetcher
from ctmwa_batch.io.partitions import Shard
from ctmwa_batch.model.posts import ImageDecoder
from ctmwa_batch.progress import Progress

logger = logging.getLogger(__name__)

READ_BUFFER_BYTES = 1 << 20  # Parquet column chunks are streamed through a buffer this size, never read whole
Decoded = tuple[np.ndarray, np.ndarray, list[str | None]]  # uint8 pixels (N, S, S, 3), ok (N,), reasons (N,)
_END = object()


class HasImages(Protocol):
    """What `prepare` returns: at least the batch's image bytes, or their locations for the fetch stage to fill them."""

    images: list[bytes | None]  # image bytes (None where null, unreadable, or still to fetch)
    locations: list[str | None] | None  # image URIs/paths to fetch into `images`; None when the column holds bytes
    read_errors: list[str | None]  # why a location gave no bytes (the fetch stage sets them)


P = TypeVar("P", bound=HasImages)


@dataclass(frozen=True)
class Steps(Generic[P]):
    """A job's two steps on a batch: `prepare` in the reader thread, `infer` in the main thread."""

    prepare: Callable[[pa.RecordBatch, Path], P]  # columns and tokens, no model
    infer: Callable[[P, Decoded], pa.RecordBatch]  # the models -> the output batch
    # ---- distinct images (ctmwa_batch.scoring.embeddings.ImageCache)
    # in the fetch thread, before decoding: the bytes to decode (None where already known); None: all
    claim: Callable[[P, list[bytes | None]], list[bytes | None]] | None = None


class Sink(Protocol):
    """Where output batches go (in the writer thread); `finish` runs once after the last batch, unless stopped."""

    def write(self, batch: pa.RecordBatch) -> None: ...

    def finish(self) -> None: ...


@dataclass
class StageSeconds:
    """Seconds spent per stage in one run; `decode` is summed over the decoding workers (CPU cost, not wall)."""

    read: float = 0.0  # waiting for the source's next batch
    prepare: float = 0.0  # the prepare step
    fetch: float = 0.0  # wall time with at least one image GET in flight (images by URI)
    fetch_wait: float = 0.0  # the fetch thread waiting for a batch's images (what fetching did not hide)
    decode_wait: float = 0.0  # the main thread waiting for a batch's pixels
    decode: float = 0.0  # decoding, all workers together
    write: float = 0.0  # the sink
    total: float = 0.0  # wall time of the run

    def as_dict(self) -> dict[str, float]:
        """Stage -> seconds."""
        return asdict(self)


@dataclass
class PipelineStats:
    """What one run did."""

    rows: int = 0  # rows the sink wrote
    batches: int = 0  # batches the sink wrote
    seconds: StageSeconds = field(default_factory=StageSeconds)
    # the fetcher's stats (requests, bytes, retries, latency) when images were by URI
    fetch: dict[str, Any] | None = None


# --------------------------------------------------------------------------------------------------- sources


def shard_batches(
    input_path: str, shard: Shard, columns: list[str], batch_size: int
) -> Iterator[tuple[pa.RecordBatch, Path]]:
    """A shard's rows, only `columns`, in record batches, with the folder relative image paths are relative to;
    column chunks are streamed, not loaded whole."""
    fs, _ = storage.open_filesystem(input_path)
    local = isinstance(fs, pafs.LocalFileSystem)
    for piece in shard.pieces:
        base = Path(piece.path).parent if local else Path.cwd()
        with fs.open_input_file(piece.path) as f:
            reader = pq.ParquetFile(f, buffer_size=READ_BUFFER_BYTES, pre_buffer=False)
            for batch in reader.iter_batches(
                batch_size=batch_size,
                row_groups=range(piece.row_group_start, piece.row_group_stop),
                columns=columns,
                use_threads=False,
            ):
                yield batch, base


# --------------------------------------------------------------------------------------------------- sinks


class ParquetSink:
    """Output batches -> a Parquet writer: row groups of `row_group_rows` whatever the batch size (None: one row group
    per batch); `tally(batch)` counts what the job reports (statuses, modalities) in the writer thread."""

    def __init__(
        self,
        writer: pq.ParquetWriter,
        schema: pa.Schema,
        row_group_rows: int | None = None,
        tally: Callable[[pa.RecordBatch], None] | None = None,
    ):
        self.writer = writer
        self.schema = schema
        self.row_group_rows = row_group_rows
        self.tally = tally
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        """Count the batch, then write every whole row group it completes."""
        if self.tally is not None:
            self.tally(batch)
        if self.row_group_rows is None:
            self.writer.write_batch(batch)
            return
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        if self._pending_rows >= self.row_group_rows:
            self._flush(final=False)

    def finish(self) -> None:
        """Write what is left (the last, shorter row group)."""
        self._flush(final=True)

    def _flush(self, final: bool) -> None:
        if not self._pending:
            return
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        size = self.row_group_rows
        assert size is not None, "write() buffers only when row_group_rows is set"
        cut = self._pending_rows if final else self._pending_rows - self._pending_rows % size
        if cut:
            self.writer.write_table(table.slice(0, cut), row_group_size=size)
        self._pending = table.slice(cut).to_batches() if cut < self._pending_rows else []
        self._pending_rows -= cut


# --------------------------------------------------------------------------------------------------- the run


class _Run:
    """One run's queues, stop flag, failures and stats; the three loops below are its threads."""

    def __init__(
        self,
        decoder: ImageDecoder,
        fetcher: Fetcher,
        sink: Sink,
        queue_batches: int,
        fetch_batches: int,
        progress: Progress | None,
    ):
        self.decoder = decoder
        self.fetcher = fetcher
        self.sink = sink
        self.progress = progress
        self.stop = threading.Event()
        self.fetching: queue.Queue = queue.Queue(maxsize=fetch_batches)
        self.prepared: queue.Queue = queue.Queue(maxsize=queue_batches)
        self.scored: queue.Queue = queue.Queue(maxsize=queue_batches)
        self.failures: list[BaseException] = []
        self.stats = PipelineStats()

    def put(self, q: queue.Queue, item: Any) -> bool:
        """Put unless the run is stopping; False when it is."""
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self, q: queue.Queue) -> Any:
        """The next item, or _END once the run is stopping."""
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if self.stop.is_set():
                    return _END

    def fail(self, e: BaseException) -> None:
        self.failures.append(e)
        self.stop.set()

    def reader(
        self, batches: Iterable[tuple[pa.RecordBatch, Path]], prepare: Callable[[pa.RecordBatch, Path], Any]
    ) -> None:
        seconds = self.stats.seconds
        try:
            source = iter(batches)
            while not self.stop.is_set():
                t0 = time.perf_counter()
                item = next(source, None)
                t1 = time.perf_counter()
                if item is None:
                    break
                prepared = prepare(*item)
                t2 = time.perf_counter()
                locations = getattr(prepared, "locations", None)
                handle = None if locations is None else self.fetcher.submit_windows(locations, item[1])
                seconds.read += t1 - t0
                seconds.prepare += t2 - t1
                if not self.put(self.fetching, (prepared, handle)):
                    break
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which re-raises it
            self.fail(e)
        finally:
            self.put(self.fetching, _END)

    def fetch_loop(self, claim: Callable[[Any, list[bytes | None]], list[bytes | None]] | None = None) -> None:
        """Batches in order: wait for their images (if by reference) window by window, handing each window's bytes to
        the decoder as it arrives, so decoding overlaps the rest of the fetch; `claim` picks the bytes to decode."""
        seconds = self.stats.seconds

        def to_decode(prepared: Any, images: list[bytes | None]) -> list[bytes | None]:
            return images if claim is None else claim(prepared, images)

        try:
            while (item := self.get(self.fetching)) is not _END:
                prepared, windows = item
                if windows is None:
                    decoding = [self.decoder.submit(to_decode(prepared, prepared.images))]
                else:
                    images: list[bytes | None] = []
                    errors: list[str | None] = []
                    decoding = []
                    for window in windows:
                        t0 = time.perf_counter()
                        while not window.done():
                            if self.stop.is_set():
                                return
                            cf.wait([window], timeout=0.1)
                        got, why = self.fetcher.result(window)
                        seconds.fetch_wait += time.perf_counter() - t0
                        images += got
                        errors += why
                        decoding.append(self.decoder.submit(to_decode(prepared, got)))
                    prepared.images, prepared.read_errors = images, errors
                if not self.put(self.prepared, (prepared, decoding)):
                    break
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which re-raises it
            self.fail(e)
        finally:
            self.put(self.prepared, _END)

    def writer(self) -> None:
        seconds = self.stats.seconds
        try:
            while (batch := self.get(self.scored)) is not _END:
                t0 = time.perf_counter()
                self.sink.write(batch)
                seconds.write += time.perf_counter() - t0
                self.stats.rows += batch.num_rows
                self.stats.batches += 1
                if self.progress is not None:
                    self.progress.update(batch.num_rows)
            if not self.stop.is_set():
                t0 = time.perf_counter()
                self.sink.finish()
                seconds.write += time.perf_counter() - t0
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which re-raises it
            self.fail(e)

    def infer_loop(self, infer: Callable[[Any, Decoded], pa.RecordBatch]) -> None:
        try:
            while (item := self.get(self.prepared)) is not _END:
                prepared, decoding = item
                t0 = time.perf_counter()
                decoded = _joined([self.decoder.result(h) for h in decoding])
                self.stats.seconds.decode_wait += time.perf_counter() - t0
                if not self.put(self.scored, infer(prepared, decoded)):
                    break
            self.put(self.scored, _END)
        except BaseException as e:
            self.fail(e)


def _joined(parts: list[Decoded]) -> Decoded:
    """One batch's decoded windows as one."""
    if len(parts) == 1:
        return parts[0]
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        [r for p in parts for r in p[2]],
    )


def run(
    batches: Iterable[tuple[pa.RecordBatch, Path]],
    steps: Steps,
    decoder: ImageDecoder,
    sink: Sink,
    *,
    queue_batches: int = 4,
    name: str = "pipeline",
    progress: Progress | None = None,
    fetcher: Fetcher | None = None,
    fetch_batches: int | None = None,
) -> PipelineStats:
    """Stream `batches` through prepare / fetch / decode / infer / sink; returns the run's stats. The first failure of
    any stage stops every stage and is raised here (after the threads are joined: nothing is left running).

    `fetcher` serves images by URI or path (one of its own when None, closed at the end); its failure counts start
    afresh for this run. `fetch_batches` (default `queue_batches`) bounds the batches whose images are being fetched
    at once: enough to keep the fetcher's concurrency busy, few enough to bound memory."""
    t_start = time.perf_counter()
    decode_before = decoder.seconds
    own = fetcher is None
    fetcher = Fetcher() if fetcher is None else fetcher
    fetcher.begin()
    r = _Run(decoder, fetcher, sink, queue_batches, fetch_batches or queue_batches, progress)
    threads = [
        threading.Thread(target=r.reader, args=(batches, steps.prepare), name=f"{name}-read", daemon=True),
        threading.Thread(target=r.fetch_loop, args=(steps.claim,), name=f"{name}-fetch", daemon=True),
        threading.Thread(target=r.writer, name=f"{name}-write", daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        r.infer_loop(steps.infer)
    finally:
        for t in threads:
            t.join()
        fetch = fetcher.summary()
        if own:
            fetcher.close()
    if r.failures:
        raise r.failures[0]
    r.stats.seconds.decode = decoder.seconds - decode_before
    if fetch["objects"]:
        r.stats.fetch = fetch
        r.stats.seconds.fetch = fetch["seconds"]
    r.stats.seconds.total = time.perf_counter() - t_start
    return r.stats
