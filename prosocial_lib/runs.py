"""Run state in one place: fingerprints, atomic writes, locks and load-or-compute caching.

Every step of the experiment that writes under ``runs/`` (a training stage, the judges, the audit's generations, the
comparison, the benchmark, the converted embedded model) follows the same three rules, implemented here once:

1. A result is keyed by a :func:`fingerprint` of everything that determines it; a result whose fingerprint matches is
   reused, never recomputed.
2. A result is written atomically (:func:`write_json_atomic`, :func:`write_text_atomic`): a reader sees the old file
   or the new one, never half of one. A file that cannot be read back is treated as missing (:func:`read_json`).
3. A folder being written is locked (:func:`run_lock`), so two processes sharing ``runs/`` never build the same
   result at once.

Layer: the bottom of the package (beside ``config`` and ``data``); it imports nothing from the library.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, TypeVar

from filelock import FileLock

T = TypeVar("T")

#: File name of the lock :func:`run_lock` takes inside a folder.
LOCK_NAME = ".lock"


def fingerprint(obj: Any, length: int = 12) -> str:
    """A short, stable hash of a JSON-serialisable ``obj`` (keys sorted; unknown types by ``str``).

    Args:
        obj: what determines a result: a config section as a dict, file digests, settings.
        length: number of hex characters kept (12 = 48 bits).

    Returns:
        ``length`` lowercase hex characters of the SHA-256 of the canonical JSON.

    Example:
        >>> fingerprint({"b": 1, "a": [1, 2]}) == fingerprint({"a": [1, 2], "b": 1})
        True
    """
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a uniquely named temporary file in the same folder and ``os.replace``.

    Readers see the old content or the new one, never a partial file; two writers never share a temporary file.
    Creates the parent folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """:func:`write_text_atomic` of ``obj`` as indented JSON (unknown types written with ``str``)."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=str))


def read_json(path: str | Path) -> Any | None:
    """The JSON content of ``path``, or ``None`` when it is missing or cannot be read back.

    A truncated or otherwise unreadable cache is treated as missing (with a warning naming the file), so the step
    that owns it recomputes it instead of failing on every later call.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        warnings.warn(f"{path} cannot be read ({e}); it is treated as missing and will be rebuilt", stacklevel=2)
        return None


def run_lock(folder: str | Path, timeout: float = -1) -> FileLock:
    """An exclusive, inter-process lock on ``folder`` (a file ``.lock`` inside it), for use as a context manager.

    Args:
        folder: the run folder being written; created if missing.
        timeout: seconds to wait for another process (-1 = wait as long as it takes).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / LOCK_NAME), timeout=timeout)


def load_or_compute(path: str | Path, compute: Callable[[], T], *, key: str | None = None,
                    lock: bool = True) -> T:
    """The JSON result cached at ``path`` if its key matches, else ``compute()`` written there atomically.

    Args:
        path: the cache file (JSON). Its content is ``{"key": key, "value": value}``.
        compute: builds the value (JSON-serialisable) when the cache is missing, unreadable or stale.
        key: what the value depends on, usually a :func:`fingerprint`; ``None`` accepts any cached value.
        lock: hold :func:`run_lock` on the parent folder while checking and computing, so concurrent processes
            compute once.

    Returns:
        The cached or freshly computed value (as read back from JSON when cached).
    """
    path = Path(path)

    def _get() -> T:
        cached = read_json(path)
        if isinstance(cached, dict) and "value" in cached and (key is None or cached.get("key") == key):
            return cached["value"]
        value = compute()
        write_json_atomic(path, {"key": key, "value": value})
        return value

    if not lock:
        return _get()
    with run_lock(path.parent):
        return _get()


def machine_info() -> dict[str, object]:
    """Where a report's times were measured: CPU model and cores, GPU, platform, date."""
    import platform
    import re

    cpu = platform.processor() or platform.machine()
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        usable = os.cpu_count()
    info: dict[str, object] = {"cpu": cpu, "cpu_cores": os.cpu_count(), "cpu_cores_usable": usable,
                               "platform": platform.platform(), "python": platform.python_version(),
                               "date": time.strftime("%Y-%m-%d")}
    try:
        import torch
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info
