"""Reading posts: the column checks, image bytes or locations from the image column, and the image-decoding process pool.

Shared by `embed` (training features) and `score` (scores), so both read posts and decode images one way.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import math
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from ctmwa_batch import schema
from ctmwa_batch.errors import InputSchemaError
from ctmwa_batch.model.preprocess import ImageSpec, decode_images
from ctmwa_batch.schema import BYTES_TYPES, ID_TYPES, PATH_TYPES, TEXT_TYPES


class PostColumns(Protocol):
    """Where a job finds the parts of a post (EmbedConfig and ScoreConfig both have these fields)."""

    @property
    def id_column(self) -> str | None: ...
    @property
    def text_column(self) -> str | None: ...
    @property
    def image_column(self) -> str | None: ...


def check_posts_schema(posts_schema: pa.Schema, columns: PostColumns, where: str) -> bool:
    """Fail before any output when a column is missing or of the wrong type; returns whether images are paths."""
    needed = {}
    if columns.id_column:
        needed[columns.id_column] = "--id-column"
    if columns.text_column:
        needed[columns.text_column] = "--text-column"
    if columns.image_column:
        needed[columns.image_column] = "--image-column"
    schema.require_columns(posts_schema, needed, where)
    if columns.id_column:
        t = posts_schema.field(columns.id_column).type
        if not any(check(t) for check in ID_TYPES):
            raise InputSchemaError(
                f"id column {columns.id_column!r} in {where} has type {t}, expected string, integer or binary; "
                "set --id-column to the post id column"
            )
    if columns.text_column:
        t = posts_schema.field(columns.text_column).type
        if not any(check(t) for check in TEXT_TYPES):
            raise InputSchemaError(
                f"text column {columns.text_column!r} in {where} has type {t}, expected string; set --text-column to the text column"
            )
    image_paths = False
    if columns.image_column:
        t = posts_schema.field(columns.image_column).type
        if any(check(t) for check in PATH_TYPES):
            image_paths = True
        elif not any(check(t) for check in (*BYTES_TYPES, pa.types.is_null)):
            raise InputSchemaError(
                f"image column {columns.image_column!r} in {where} has type {t}, expected binary (image bytes) or string "
                "(path/URI); set --image-column to the image column"
            )
    return image_paths


def image_items(
    batch: pa.RecordBatch, image_column: str | None, image_paths: bool
) -> tuple[list[bytes | None], list[str | None] | None]:
    """A batch's image bytes and, for a path/URI column, its image locations instead (the bytes stay None until the
    pipeline's fetch stage, ctmwa_batch.io.fetch, fills them)."""
    if not image_column:
        return [None] * batch.num_rows, None
    values = batch.column(image_column).to_pylist()
    if not image_paths:
        return values, None
    return [None] * len(values), values


# --------------------------------------------------------------------------------------------------- decoding


def _timed_decode(
    items: Sequence[bytes | None], spec: ImageSpec
) -> tuple[np.ndarray, np.ndarray, list[str | None], float]:
    t0 = time.perf_counter()
    pixels, ok, reasons = decode_images(items, spec)
    return pixels, ok, reasons, time.perf_counter() - t0


def _exit_with_parent(parent: int) -> None:
    """Pool initializer: a decoder whose parent was killed (SIGKILL, OOM killer) exits instead of lingering."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def image_errors(
    ok: Sequence[bool] | np.ndarray, reasons: Sequence[str | None], read_errors: Sequence[str | None]
) -> list[str | None]:
    """Per row, why a present image could not be used (its path unreadable, its bytes undecodable); None where the
    image was usable or simply absent (null or empty: a missing modality, not an error)."""
    return [
        read_err or (None if usable or reason in ("null", "empty") else reason)
        for usable, reason, read_err in zip(ok, reasons, read_errors)
    ]


@contextlib.contextmanager
def _children_allowed() -> Iterator[None]:
    """While worker processes start, undo what a Celery worker leaves in this process's multiprocessing state.

    Celery's prefork pool (billiard) starts its children as daemons, with billiard's own authentication key object,
    and an Airflow task process forked below one inherits both. multiprocessing then refuses to start any process
    ("daemonic processes are not allowed to have children"), and spawn cannot pickle billiard's key, so scoring on a
    Celery worker would fail. The daemon rule keeps a killed daemon from leaving orphans; the decoders exit with their
    parent anyway (_exit_with_parent). Both live only in the process's private _config, hence the direct edit."""
    from multiprocessing.process import AuthenticationString  # type: ignore[attr-defined]  # private, untyped

    config = multiprocessing.current_process()._config  # type: ignore[attr-defined]  # private, see above
    saved = {k: config[k] for k in ("daemon", "authkey") if k in config}
    if config.get("daemon"):
        config["daemon"] = False
    key = config.get("authkey")
    if key is not None and type(key) is not AuthenticationString:
        config["authkey"] = AuthenticationString(bytes(key))
    try:
        yield
    finally:
        config.update(saved)


@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
    """While worker processes start, hide this process's main script from multiprocessing's spawn.

    spawn re-runs a main script that has a __file__ and no module spec. Under an Airflow worker that script is the
    `airflow` command itself, which fails in a task's child (task processes get no metadata database URL) and would
    break the pool; the decoders need nothing from it. `python -m` mains have a spec and are left alone."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


class ImageDecoder:
    """Image decoding in this process or in a pool of worker processes; uint8 pixels travel back, never float32.

    `submit` returns at once with a handle; `result` waits for it. With workers=0, `submit` decodes in the calling
    thread (Pillow releases the GIL while it decodes and resizes, so a reader thread still overlaps inference).
    """

    def __init__(self, spec: ImageSpec, workers: int):
        self.spec = spec
        self.workers = workers
        self.seconds = 0.0  # decode time summed over every worker (CPU-side cost, not wall time)
        self._lock = threading.Lock()
        self.pool = None
        if workers > 0:
            # spawn, not fork: the parent holds ONNX Runtime threads, which fork would copy in a broken state.
            # Workers start lazily in submit(), which hides the main script too.
            self.pool = cf.ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with_parent,
                initargs=(os.getpid(),),
            )

    def submit(self, items: list[bytes | None]) -> Any:
        """Start decoding a batch; returns a handle for `result`."""
        if self.pool is None:
            return _timed_decode(items, self.spec)
        # Chunks small enough that every worker gets a share of each batch.
        chunk = max(8, math.ceil(len(items) / (2 * self.workers)))
        with _main_script_hidden(), _children_allowed():
            return [
                self.pool.submit(_timed_decode, items[i : i + chunk], self.spec) for i in range(0, len(items), chunk)
            ]

    def result(self, handle: Any) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """(uint8 pixels (N, S, S, 3), ok (N,), reasons (N,)) of a submitted batch."""
        parts = [handle] if self.pool is None else [future.result() for future in handle]
        with self._lock:
            self.seconds += sum(p[3] for p in parts)
        if not parts:
            return np.zeros((0, self.spec.size, self.spec.size, 3), np.uint8), np.zeros(0, bool), []
        if len(parts) == 1:
            return parts[0][0], parts[0][1], parts[0][2]
        return (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            [r for p in parts for r in p[2]],
        )

    def close(self) -> None:
        """Stop the pool (pending work is cancelled)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __enter__(self) -> ImageDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
