"""Machine facts and peak-memory measurement for the benchmark."""

from __future__ import annotations

import contextlib
import gc
import os
import re
import threading
from pathlib import Path
from typing import Any

import torch

from ..config.schema import Config


# ---------------------------------------------------------------------- the machine
def machine_header(cfg: Config, device: torch.device, model=None) -> dict[str, Any]:
    """Where the numbers come from: CPU model and cores, torch threads and versions, device, preset, model."""
    import transformers

    from ..runs import machine_info
    info = machine_info()
    header: dict[str, Any] = {
        "preset": cfg.preset, "model": cfg.model.name, "device": str(device), "cpu": info["cpu"],
        "cpu_cores": info["cpu_cores"], "cpu_cores_usable": info["cpu_cores_usable"],
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "python": info["python"], "platform": info["platform"],
        "load_average_start": _loadavg(),
    }
    with contextlib.suppress(ImportError):
        import trl
        header["trl"] = trl.__version__
    if device.type == "cuda":
        header["gpu"] = torch.cuda.get_device_name(device)
    if model is not None:
        header["parameters"] = sum(p.numel() for p in model.parameters())
    return header


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# ---------------------------------------------------------------------- memory
def _status_kb(key: str) -> int | None:
    try:
        m = re.search(rf"^{key}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil
    return psutil.Process().memory_info().rss


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so the next row's
    baseline is not inflated by memory the previous row freed."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory of a block above a baseline (module docstring): :meth:`baseline` before the row's model copy is
    made, :meth:`reset` just before training, :meth:`peak_mb` after it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = ""
        self._base = 0
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._max = 0

    def baseline(self) -> None:
        release_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
        else:
            self._base = _rss_bytes()

    def reset(self) -> None:
        if self.device.type == "cuda":
            return
        try:  # Linux: writing 5 resets the peak RSS (VmHWM) to the current RSS
            Path("/proc/self/clear_refs").write_text("5")
            if _status_kb("VmHWM") is None:
                raise OSError("no VmHWM")
            self.method = "peak RSS (VmHWM after /proc/self/clear_refs)"
            return
        except OSError:
            pass
        self.method = "RSS sampled every 5 ms (psutil)"
        self._stop.clear()
        self._max = _rss_bytes()

        def sample() -> None:
            while not self._stop.wait(0.005):
                self._max = max(self._max, _rss_bytes())
        self._sampler = threading.Thread(target=sample, daemon=True)
        self._sampler.start()

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self._sampler = None
            peak = max(self._max, _rss_bytes())
        else:
            peak = (_status_kb("VmHWM") or 0) * 1024
        return round((peak - self._base) / 2**20, 1)
