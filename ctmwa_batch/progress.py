"""Progress of a long job: rows done, rows/s and ETA, on a terminal line or in the log."""

from __future__ import annotations

import logging
import sys
import threading
import time

logger = logging.getLogger(__name__)


class Progress:
    """Rows scored, rows/s and ETA: a self-rewriting line on a terminal, a log line per interval otherwise."""

    def __init__(self, total_rows: int, interval_s: float = 10.0, interactive: bool = False, label: str = "scored"):
        self.total = total_rows
        self.interval = interval_s if not interactive else 0.5
        self.interactive = interactive
        self.label = label
        self.rows = 0
        self.t0 = time.perf_counter()
        self._last = self.t0
        self._lock = threading.Lock()

    def line(self) -> str:
        """The current progress as text."""
        elapsed = time.perf_counter() - self.t0
        rate = self.rows / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.rows) / rate if rate > 0 else float("inf")
        eta = "?" if left == float("inf") else f"{int(left // 60)}m{int(left % 60):02d}s"
        pct = 100.0 * self.rows / self.total if self.total else 100.0
        return f"{self.label} {self.rows:,}/{self.total:,} rows ({pct:.1f}%), {rate:,.0f} rows/s, ETA {eta}"

    def update(self, rows: int) -> None:
        """Count rows done; report when the interval has passed."""
        with self._lock:
            self.rows += rows
            now = time.perf_counter()
            if now - self._last < self.interval:
                return
            self._last = now
        self._emit()

    def _emit(self) -> None:
        if self.interactive:
            sys.stderr.write("\r" + self.line() + "\033[K")
            sys.stderr.flush()
        else:
            logger.info("%s", self.line())

    def close(self) -> None:
        """Final report."""
        if self.interactive:
            self._emit()
            sys.stderr.write("\n")
            sys.stderr.flush()
