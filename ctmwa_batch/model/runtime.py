"""ONNX Runtime sessions: provider choice (auto | cpu | cuda), thread settings, IO binding on CUDA.

A requested GPU that is not there is an error (ProviderUnavailable), never a silent CPU fallback; `auto`
takes CUDA when it works and says in the log which provider it got. Before the first session that may use CUDA,
`onnxruntime.preload_dlls()` (onnxruntime >= 1.21) loads the CUDA runtime, cuBLAS and cuDNN from the nvidia-* pip
packages that the `gpu` extra installs, so a worker needs the driver only; `EVENTS` records it and every session.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctmwa_batch.config import DEFAULT_DEVICE
from ctmwa_batch.config import check_device as _check_device_name
from ctmwa_batch.errors import BundleError, ProviderUnavailable

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
GPU_EXTRA_HINT = "install the GPU runtime: pip install 'ctmwa-batch[gpu]' (onnxruntime-gpu with its CUDA/cuDNN packages, in place of onnxruntime)"

# What this process did with ONNX Runtime, in order: ("preload_dlls", outcome) once, ("session", file name, provider)
# per session. Read by the job's log, by tests and by bench/gpu_check.sh; bounded, so it never grows.
EVENTS: collections.deque[tuple[str, ...]] = collections.deque(maxlen=256)
_preload_lock = threading.Lock()
_preloaded: list[str] = []  # the outcome, once preload_cuda_libraries has run in this process


def import_onnxruntime() -> Any:
    """The onnxruntime module, or ProviderUnavailable naming the extra to install."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ProviderUnavailable(
            f"onnxruntime is not installed ({e}); install one runtime extra: "
            "pip install 'ctmwa-batch[cpu]' (CPU) or pip install 'ctmwa-batch[gpu]' (CUDA workers), never both"
        ) from e
    return onnxruntime


@dataclass(frozen=True)
class RuntimeConfig:
    """How ONNX Runtime sessions are made."""

    device: str = DEFAULT_DEVICE  # auto: CUDA if it works, else CPU (logged); cpu; cuda: CUDA or ProviderUnavailable
    intra_op_threads: int = 0  # threads inside one operator; 0 lets ONNX Runtime use every core
    inter_op_threads: int = 0  # threads across independent operators; 0 = ONNX Runtime's default
    device_id: int = 0  # which CUDA device
    io_binding: bool | None = None  # None: use IO binding on CUDA only; True/False forces it (tests use True on CPU)
    log_severity: int = 3  # ONNX Runtime's own log level (0 verbose .. 4 fatal); 3 keeps fallback noise out of logs
    # Idle intra-op threads busy-wait for the next operator by default. A scoring job runs three sessions, a decode
    # pool, a reader and a writer on the same cores: a spinning pool then steals the CPU the others need (on the
    # 2-core VM under load, fp32 image+text+head ran 2.1 img/s spinning and 4.4 without). Off unless asked for.
    allow_spinning: bool = False

    def __post_init__(self) -> None:
        _check_device_name(self.device)


class OnnxModel:
    """An inference session plus how to run it: `run(feeds) -> {output name: array}`."""

    def __init__(self, session: Any, path: Path, config: RuntimeConfig):
        self.session = session
        self.path = path
        self.config = config
        self.provider = session.get_providers()[0]
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self.io_binding = config.io_binding if config.io_binding is not None else self.provider == CUDA

    @property
    def on_gpu(self) -> bool:
        """Whether the session runs on CUDA."""
        return self.provider == CUDA

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on numpy inputs; on CUDA through IO binding (one host->device copy per input)."""
        if set(feeds) != set(self.input_names):
            raise ValueError(f"{self.path.name} takes inputs {self.input_names}, got {sorted(feeds)}")
        if not self.io_binding:
            return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        device = "cuda" if self.on_gpu else "cpu"
        for name in self.output_names:
            binding.bind_output(name, device, self.config.device_id if self.on_gpu else 0)
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))


def _providers_for(device: str, available: list[str], device_id: int) -> list[Any]:
    if device == "cpu":
        return [CPU]
    if CUDA not in available:
        if device == "cuda":
            raise ProviderUnavailable(
                f"device 'cuda' requested but this onnxruntime offers only {available}; {GPU_EXTRA_HINT}, "
                "or run with --device cpu"
            )
        return [CPU]
    return [(CUDA, {"device_id": device_id}), CPU]


def preload_cuda_libraries(ort: Any) -> str:
    """Call onnxruntime.preload_dlls() once per process (where it exists) so that the CUDA provider finds the CUDA
    runtime, cuBLAS and cuDNN of the nvidia-* pip packages; returns what happened ("called", "absent", "failed: ...").

    A CPU build's preload_dlls returns at once, so calling it wherever CUDA may be used costs nothing."""
    with _preload_lock:
        if _preloaded:
            return _preloaded[0]
        preload = getattr(ort, "preload_dlls", None)
        if preload is None:
            outcome = "absent"  # onnxruntime < 1.21: the CUDA libraries must be on the loader path
        else:
            try:
                preload()
                outcome = "called"
            except Exception as e:  # noqa: BLE001 - a failed preload shows up as a missing CUDA provider below
                outcome = f"failed: {type(e).__name__}: {e}"
                logger.warning("onnxruntime.preload_dlls() failed (%s); CUDA sessions may not load their libraries", e)
        _preloaded.append(outcome)
        EVENTS.append(("preload_dlls", outcome))
        logger.debug("onnxruntime.preload_dlls: %s", outcome)
        return outcome


def expects_cuda(device: str) -> bool:
    """Whether sessions opened for `device` will try CUDA: cuda always, auto where this onnxruntime offers it."""
    if device == "cuda":
        return True
    if device == "auto":
        return CUDA in import_onnxruntime().get_available_providers()
    return False


def check_device(device: str) -> None:
    """Fail early (ProviderUnavailable) when `device` asks for CUDA and this onnxruntime has no CUDA provider.

    A cheap check before a job writes anything; create_session still makes the final check."""
    _check_device_name(device)
    _providers_for(device, import_onnxruntime().get_available_providers(), 0)


def create_session(path: str | Path, config: RuntimeConfig = RuntimeConfig()) -> OnnxModel:
    """Open an ONNX graph on the configured device; ProviderUnavailable if `cuda` was asked for and is not usable."""
    ort = import_onnxruntime()
    path = Path(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.log_severity_level = config.log_severity
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.allow_spinning else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if config.device != "cpu":
        preload_cuda_libraries(ort)  # before the first session that may open CUDA
    providers = _providers_for(config.device, ort.get_available_providers(), config.device_id)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:
        if config.device != "cpu" and any(word in str(e).lower() for word in ("provider", "cuda", "cudnn")):
            raise ProviderUnavailable(
                f"cannot open {str(path)!r} on {config.device}: {e}; {GPU_EXTRA_HINT}, or run with --device cpu"
            ) from e
        raise BundleError(f"onnxruntime cannot load {str(path)!r}: {e}; re-export the graph") from e
    got = session.get_providers()
    if config.device == "cuda" and CUDA not in got:
        # onnxruntime-gpu is installed but CUDA/cuDNN could not be loaded: it fell back to CPU after logging.
        raise ProviderUnavailable(
            f"device 'cuda' requested but {path.name} got {got}: onnxruntime-gpu is installed but its CUDA libraries "
            "(CUDA runtime, cuBLAS, cuDNN) could not be loaded; install the CUDA/cuDNN versions this onnxruntime-gpu "
            "needs (or call onnxruntime.preload_dlls() with the nvidia-* pip packages), or run with --device cpu"
        )
    model = OnnxModel(session, path, config)
    EVENTS.append(("session", path.name, model.provider))
    if config.device == "auto":
        logger.info(
            "%s runs on %s (device auto; CUDA %s)",
            path.name,
            model.provider,
            "in use" if model.on_gpu else "not available",
        )
    else:
        logger.debug("%s runs on %s", path.name, model.provider)
    return model
