"""Benchmark the CTMWA head: rows/s of PyTorch (eval, no_grad) against onnxruntime, folded vs unfolded
translators, fp32 vs fp16 (with the largest prob difference and argmax agreement), CPU at 1 thread and all
threads, CUDA where present. Not a test: run it and read the table.

    python -m bench.bench_head [--batch-sizes 1024 8192] [--seconds 1.0] [--dim 512]

Default dims are the reference's (Dt = Dv = 512, E = 128, C = 3) with random weights: speed does not depend
on the values.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ctmwa_batch.model.runtime import CUDA, RuntimeConfig, create_session, import_onnxruntime
from ctmwa_export.head import HEAD_INPUTS, CTMWAHead, HeadExportConfig, export_head_graph, fold_translators, head_inputs
from ctmwa_training.model import CTMWA, CTMWAConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig:
    """What the benchmark measures."""

    batch_sizes: tuple[int, ...] = (1024, 8192)  # rows per call
    seconds: float = 1.0  # time each measurement for at least this long (after a warm-up call)
    min_calls: int = 3  # and at least this many calls
    dim: int = 512  # Dt = Dv
    embed_dim: int = 128  # E
    num_classes: int = 3  # C
    threads: tuple[int, ...] = (1, 0)  # CPU threads per run; 0 = every core
    seed: int = 0  # weights and inputs


def rows_per_second(fn: Callable[[], object], rows: int, config: BenchConfig) -> float:
    """Median rows/s over calls of fn, after one warm-up call."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < config.min_calls or time.perf_counter() - start < config.seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return rows / statistics.median(times)


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n or os.cpu_count() or 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(
        prog="bench_head", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = BenchConfig()
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(d.batch_sizes))
    parser.add_argument("--seconds", type=float, default=d.seconds)
    parser.add_argument("--dim", type=int, default=d.dim)
    args = parser.parse_args(argv)
    config = BenchConfig(batch_sizes=tuple(args.batch_sizes), seconds=args.seconds, dim=args.dim)
    logging.basicConfig(level=logging.WARNING)
    for name in ("onnx_ir", "onnxscript", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    ort = import_onnxruntime()

    torch.manual_seed(config.seed)
    model = CTMWA(
        CTMWAConfig(
            text_dim=config.dim, image_dim=config.dim, embed_dim=config.embed_dim, num_classes=config.num_classes
        )
    ).eval()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})"
    )
    print(
        f"model: Dt = Dv = {config.dim}, E = {config.embed_dim}, C = {config.num_classes}, random weights; inputs: mixed masks (70% text, 70% image)"
    )

    with tempfile.TemporaryDirectory() as tmp:
        graphs = {}
        t0 = time.perf_counter()
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
            for label, export_config in (
                ("onnx fp32 folded", HeadExportConfig()),
                ("onnx fp32 unfolded", HeadExportConfig(fold_translators=False)),
                ("onnx fp16 folded", HeadExportConfig(fp16=True)),
            ):
                graphs[label] = export_head_graph(
                    model, Path(tmp) / f"{label.replace(' ', '_')}.onnx", export_config
                ).path
        print(f"exported and validated 3 graphs in {time.perf_counter() - t0:.1f}s")

        torch_modules = {
            "torch fp32 unfolded": CTMWAHead(model),
            "torch fp32 folded": CTMWAHead(fold_translators(model)),
        }
        results: list[tuple[str, str, int, float]] = []
        for n in config.batch_sizes:
            feeds = head_inputs(n, "mixed", text_dim=config.dim, image_dim=config.dim, seed=config.seed)
            tensors = tuple(torch.from_numpy(feeds[name]) for name in HEAD_INPUTS)
            for threads in config.threads:
                where = f"cpu {threads or os.cpu_count()} thr"
                for label, module in torch_modules.items():
                    with torch_threads(threads), torch.no_grad():
                        results.append((label, where, n, rows_per_second(lambda m=module, t=tensors: m(*t), n, config)))
                for label, path in graphs.items():
                    session = create_session(path, RuntimeConfig(device="cpu", intra_op_threads=threads))
                    results.append((label, where, n, rows_per_second(lambda s=session, f=feeds: s.run(f), n, config)))
            if CUDA in ort.get_available_providers():
                for label, path in graphs.items():
                    session = create_session(path, RuntimeConfig(device="cuda"))
                    results.append(
                        (label, "cuda (io binding)", n, rows_per_second(lambda s=session, f=feeds: s.run(f), n, config))
                    )
            if torch.cuda.is_available():
                cuda_module = CTMWAHead(model).cuda()
                cuda_tensors = tuple(t.cuda() for t in tensors)

                def run_cuda(cuda_module=cuda_module, cuda_tensors=cuda_tensors) -> None:
                    with torch.no_grad():
                        cuda_module(*cuda_tensors)
                    torch.cuda.synchronize()

                results.append(("torch fp32 unfolded", "cuda (on device)", n, rows_per_second(run_cuda, n, config)))

        print()
        print(f"{'graph':<22}{'where':<20}{'batch':>7}{'rows/s':>14}")
        for label, where, n, rate in results:
            print(f"{label:<22}{where:<20}{n:>7}{rate:>14,.0f}")
        if CUDA not in ort.get_available_providers():
            print(
                f"CUDA: skipped (this onnxruntime offers {ort.get_available_providers()}; install onnxruntime-gpu on a GPU machine)"
            )
        if not torch.cuda.is_available():
            print("CUDA (torch): skipped (torch.cuda.is_available() is False)")

        # Accuracy of the variants against the PyTorch model, on the largest batch.
        n = max(config.batch_sizes)
        feeds = head_inputs(n, "mixed", text_dim=config.dim, image_dim=config.dim, seed=config.seed + 1)
        with torch.no_grad():
            want = {
                k: v.numpy()
                for k, v in CTMWAHead(model)(*(torch.from_numpy(feeds[name]) for name in HEAD_INPUTS)).items()
            }
        print()
        print(f"agreement with PyTorch fp32 on {n} rows (mixed masks):")
        for label, path in graphs.items():
            got = create_session(path, RuntimeConfig(device="cpu")).run(feeds)
            prob = np.abs(got["probs"] - want["probs"]).max()
            weights = max(np.abs(got[k] - want[k]).max() for k in ("text_weight", "image_weight"))
            agree = (got["probs"].argmax(1) == want["probs"].argmax(1)).mean()
            print(
                f"  {label:<20} max |probs diff| {prob:.2e}, max |weight diff| {weights:.2e}, argmax agreement {agree:.4%}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
