"""What every benchmark prints beside its figures: the CPU and the flags that decide int8 / fp32 speed.

Speed ratios differ from one CPU to the next (AVX-512 VNNI and AMX above all), so each bench names them. Bench scripts
import this as `machine` (python puts the script's folder, bench/, first on sys.path).
"""

from __future__ import annotations

import os
from pathlib import Path

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")


def cpu_info() -> dict:
    """CPU model, core count, the flags of CPU_FLAGS it has (from /proc/cpuinfo, as lscpu shows them) and the load."""
    model, flags = "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "model": model,
        "cpus": os.cpu_count(),
        "flags": [f for f in CPU_FLAGS if f in flags],
        "load_1min": round(os.getloadavg()[0], 2),
    }


def cpu_flags() -> str:
    """One line: the CPU model, its cores and flags, and the load average."""
    info = cpu_info()
    return f"{info['model']}; {info['cpus']} CPUs; flags: {' '.join(info['flags']) or 'no avx2/avx512/vnni/amx'}; load {info['load_1min']}"
