"""Which encoder precision variant a job runs: `--precision auto | fp32 | fp16 | int8` (`CTMWA_PRECISION`).

`auto` takes int8 on CPU and fp16 on CUDA where the bundle has them, otherwise fp32, and logs what it took. A
variant the bundle lacks is an error naming the variants it has. Training features (`embed`, `ctmwa-train prepare`)
default to fp32: the head must learn from the embeddings it was validated against.
"""

from __future__ import annotations

import logging

from ctmwa_batch.config import PRECISIONS as CHOICES  # what --precision / CTMWA_PRECISION accept: auto and PRECISIONS
from ctmwa_batch.config import check_precision
from ctmwa_batch.errors import BundleError
from ctmwa_batch.model.bundle import FP16, FP32, INT8, PRECISIONS, Bundle

logger = logging.getLogger(__name__)

AUTO = "auto"
assert CHOICES == (AUTO, *PRECISIONS)  # internal: config's names are the bundle's variants plus auto
# auto's preference per device kind, best first; fp32 closes each list since every bundle has it.
AUTO_ORDER = {"cpu": (INT8, FP32), "cuda": (FP16, FP32)}


check_choice = check_precision


def resolve_precision(requested: str, available: tuple[str, ...], on_gpu: bool, where: str = "the bundle") -> str:
    """The variant to load: `requested` itself, or for auto the first of AUTO_ORDER that `available` has.

    BundleError when a named variant is not available (the message lists those that are)."""
    check_choice(requested)
    if requested != AUTO:
        if requested not in available:
            raise BundleError(
                f"{where} has no {requested} encoders; it has {list(available)}: choose one of those (--precision / "
                f"CTMWA_PRECISION), use auto, or re-export the encoders with --precision {requested}"
            )
        return requested
    device = "cuda" if on_gpu else "cpu"
    chosen = next((p for p in AUTO_ORDER[device] if p in available), None)
    if chosen is None:
        raise BundleError(f"{where} has no encoders usable on {device}; it has {list(available)}")
    logger.info("precision auto on %s: %s encoders (bundle has %s)", device, chosen, list(available))
    return chosen


def resolve_for_bundle(requested: str, bundle: Bundle, on_gpu: bool) -> str:
    """resolve_precision against a bundle's variants."""
    return resolve_precision(requested, bundle.precisions, on_gpu, where=f"bundle {str(bundle.root)!r}")
