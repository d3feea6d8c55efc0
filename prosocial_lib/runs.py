"""Run state in one place: fingerprints, atomic writes, locks and load-or-compute caching.

Every step of the experiment that writes under ``runs/`` (a training stage, the judges, the audit's generations, the
comparison, the benchmark, the converted embedded model) follows the same three rules, implemented here once:

1. A result is keyed by a :func:`fingerprint` of everything that determines it; a result whose fingerprint matches is
   reused, never recomputed.
2. A result is written atomically (:func:`write_json_atomic`, :func:`write_text_atomic`, :func:`write_jsonl_atomic`,
   :func:`atomic_path` for other formats, :func:`build_folder_atomic` for a whole folder): a reader sees the old
   file or the new one, never half of one. A file that cannot be read back is treated as missing
   (:func:`read_json`, :func:`read_jsonl`).
3. A folder being written is locked (:func:`run_lock`), so two processes sharing ``runs/`` never build the same
   result at once; :func:`exclusive_run` refuses a second writer at once, naming the first one's pid.
4. A result too big to rebuild on a whim (a model) records the SHA-256 of its files (:func:`file_digests`) and is
   checked against them before it is reused.

:func:`load_or_build` combines the first three for a result saved in one file (its fingerprint in the file name, or
in the file and checked by its ``valid``).

Every chapter's steps use it: the stages of chapters 02-03, the judges and generations of chapter 01, the
comparison of chapter 04 and the benchmark appendix.

Layer: the bottom of the package (beside ``config`` and ``data``); it imports nothing from the library.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from filelock import FileLock, Timeout

T = TypeVar("T")

#: File name of the lock :func:`run_lock` takes inside a folder.
LOCK_NAME = ".lock"
#: File beside the lock naming the pid of the process :func:`exclusive_run` let in.
OWNER_NAME = ".lock.pid"


class RunBusyError(RuntimeError):
    """Another live process is writing the folder (:func:`exclusive_run`); the message names its pid."""


def fingerprint(obj: Any, length: int = 12) -> str:
    """A short, stable hash of a JSON-serialisable ``obj`` (keys sorted; unknown types by ``str``).

    Args:
        obj: what determines a result: a config section as a dict, file digests, settings.
        length: number of hex characters kept (12 = 48 bits).

    Returns:
        ``length`` lowercase hex characters of the SHA-256 of the canonical JSON
        (``json.dumps(obj, sort_keys=True, default=str)``).

    Example:
        >>> fingerprint({"b": 1, "a": [1, 2]}) == fingerprint({"a": [1, 2], "b": 1})
        True
    """
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file path beside ``path`` to write to; on success it replaces ``path`` (``os.replace``).

    For writers that want a file name rather than text (``np.savez``, ``DataFrame.to_csv``). The temporary name
    ends with ``path``'s suffix (``np.savez`` appends ``.npz`` otherwise) and is unique, so two writers never share
    it. On an exception the temporary file is removed and ``path`` keeps its old content.

    Args:
        path: the file to (re)write; its parent folder is created.

    Yields:
        The temporary path to write.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "x.npz"
        >>> with atomic_path(out) as tmp:
        ...     np.savez(tmp, a=np.zeros(2))
        >>> sorted(p.name for p in out.parent.iterdir())
        ['x.npz']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_path`.

    Readers see the old content or the new one, never a partial file; two writers never share a temporary file.

    Args:
        path: the file to write; its parent folder is created.
        text: the whole new content.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    """:func:`write_text_atomic` of ``obj`` as JSON (unknown types written with ``str``).

    Args:
        path: the file to write.
        obj: a JSON-serialisable value (numbers, strings, lists, dicts; anything else becomes its ``str``).
        indent: ``json.dumps``' indent (``None``: one line).
    """
    write_text_atomic(path, json.dumps(obj, indent=indent, default=str))


def write_jsonl_atomic(path: str | Path, records: Iterable[Any]) -> None:
    """:func:`write_text_atomic` of ``records`` as JSON Lines: one ``json.dumps(record, ensure_ascii=False)`` a line.

    Args:
        path: the ``.jsonl`` file to write.
        records: JSON-serialisable values, one per line, in order.
    """
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _unreadable(path: Path, error: Exception) -> None:
    warnings.warn(f"{path} cannot be read ({error}); it is treated as missing and will be rebuilt", stacklevel=3)


def read_json(path: str | Path) -> Any | None:
    """The JSON content of ``path``, or ``None`` when it is missing or cannot be read back.

    A truncated or otherwise unreadable cache is treated as missing (with a warning naming the file), so the step
    that owns it recomputes it instead of failing on every later call.

    Args:
        path: a JSON file.

    Returns:
        The parsed content, or ``None`` (missing or unreadable).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        _unreadable(path, e)
        return None


def read_jsonl(path: str | Path) -> list[Any] | None:
    """The records of a JSON Lines file (blank lines skipped), or ``None`` when it is missing or unreadable.

    Args:
        path: a ``.jsonl`` file, e.g. one :func:`write_jsonl_atomic` wrote.

    Returns:
        One parsed value per non-blank line, or ``None`` (missing, or any line unreadable: warned, as
        :func:`read_json`).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        _unreadable(path, e)
        return None


def run_lock(folder: str | Path, timeout: float = -1) -> FileLock:
    """An exclusive, inter-process lock on ``folder`` (a file ``.lock`` inside it), for use as a context manager.

    Locks are not re-entrant across lock objects: do not take the lock of a folder again while holding it.

    Args:
        folder: the run folder being written; created if missing.
        timeout: seconds to wait for another process (-1 = wait as long as it takes).

    Returns:
        A :class:`filelock.FileLock` (``with run_lock(folder): ...``).

    Raises:
        filelock.Timeout: when ``timeout`` passes before the lock is free.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / LOCK_NAME), timeout=timeout)


@contextlib.contextmanager
def exclusive_run(folder: str | Path, what: str = "process", hint: str = "wait for it") -> Iterator[Path]:
    """Hold the lock of ``folder`` for the whole block, or fail at once when another process holds it.

    The lock is :func:`run_lock` (an OS file lock: it is released when its process ends, even by SIGKILL, so a
    killed run never blocks the next one); the holder's pid is written beside it (:data:`OWNER_NAME`) so the
    refusal can name it. Only the holder changes the folder, so a live run is never mistaken for an interrupted
    one.

    Args:
        folder: the folder to own (created if missing).
        what: names the other writer in the message (``"training process"``).
        hint: what the user can do, the end of the message (``"wait for it or use another --run-name"``).

    Yields:
        ``folder`` as a :class:`~pathlib.Path`.

    Raises:
        RunBusyError: ``"another <what> (pid N) is writing <folder>; <hint>"``.
    """
    folder = Path(folder)
    lock = run_lock(folder, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        owner = (_read_text(folder / OWNER_NAME) or "").strip()
        who = f"{what} (pid {owner})" if owner.isdigit() else what
        raise RunBusyError(f"another {who} is writing {folder}; {hint}") from None
    try:
        write_text_atomic(folder / OWNER_NAME, f"{os.getpid()}\n")
        yield folder
    finally:
        (folder / OWNER_NAME).unlink(missing_ok=True)
        lock.release()


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def shown_path(path: str | Path, runs_root: str | Path) -> str:
    """How a book page names a run folder: ``runs/<run>/<...>`` relative to the runs folder, never the build
    machine's absolute path (a path outside ``runs_root`` shows as its last two parts).

    Args:
        path: a folder or file of a run.
        runs_root: the runs folder (``Config.run_dir.parent``).

    Returns:
        The path as the reader should see it.
    """
    path = Path(path)
    try:
        return str(Path("runs") / path.resolve().relative_to(Path(runs_root).resolve()))
    except ValueError:
        return str(Path(*path.parts[-2:])) if len(path.parts) > 1 else str(path)


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 (hex) of the file ``path``, read ``chunk`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_digests(folder: str | Path, patterns: Iterable[str] = ("*.safetensors", "*.bin", "*.pt")
                 ) -> dict[str, str]:
    """``{file name: SHA-256}`` of the files of ``folder`` matching ``patterns`` (not recursive), sorted by name.

    A saved model records them (a stage's ``metrics.json["weights"]``) and is checked against them before reuse:
    a truncated or replaced weight file is then retrained, not trusted.
    """
    folder = Path(folder)
    names = sorted({p.name for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    return {name: file_digest(folder / name) for name in names}


def load_or_build(path: str | Path, build: Callable[[], T], *, valid: Callable[[Any], bool] | None = None,
                  read: Callable[[Path], Any | None] = read_json,
                  write: Callable[[Path, Any], None] = write_json_atomic,
                  lock: bool = True, force: bool = False) -> tuple[T, bool]:
    """The result saved at ``path`` when it reads back (and ``valid`` accepts it), else ``build()`` saved there.

    The one "reuse if present" rule of the library: the audit's generations, the comparison's perplexities and
    held-out scores and the benchmark all go through it.

    Args:
        path: the cache file. Usually its name carries a :func:`fingerprint` of what the result depends on.
        build: computes the result when the cache is missing, unreadable, rejected by ``valid`` or ``force``d.
        valid: checks a result read back (e.g. the fingerprint stored inside it); ``None`` accepts any.
        read: reads ``path``, ``None`` for missing or unreadable (:func:`read_json`, :func:`read_jsonl`).
        write: writes the result atomically (:func:`write_json_atomic`, :func:`write_jsonl_atomic`).
        lock: hold :func:`run_lock` on the parent folder while checking and building, so concurrent processes
            build once.
        force: build even when a valid result is saved.

    Returns:
        ``(result, reused)``: the result as read back when reused (``reused=True``), else as ``build`` returned it.
    """
    path = Path(path)

    def get() -> tuple[T, bool]:
        if not force:
            saved = read(path)
            if saved is not None and (valid is None or valid(saved)):
                return saved, True
        value = build()
        write(path, value)
        return value, False

    if not lock:
        return get()
    with run_lock(path.parent):
        return get()


def build_folder_atomic(target: str | Path, build: Callable[[Path], T], *,
                        complete: Callable[[Path], bool] | None = None) -> tuple[T | None, bool]:
    """Build a folder in a temporary sibling and rename it to ``target``: an interrupted build never leaves a
    half-written folder behind, and an inter-process lock (``.<name>.lock`` beside it) keeps two processes from
    building it at once.

    Args:
        target: the folder to (re)build. An existing one is replaced once the new one is complete.
        build: fills the empty temporary folder it is given (world-readable, like the rest of the cache).
        complete: says whether ``target`` already holds a finished folder; checked under the lock, so a process
            that waited for another one's build does not redo it. ``None``: always rebuild.

    Returns:
        ``(what build returned, True)`` after a build, ``(None, False)`` when ``complete(target)`` held.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if complete is not None and complete(target):  # another process finished while we waited
            return None, False
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any other
        try:
            result = build(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return result, True


def machine_info() -> dict[str, object]:
    """Where a report's times were measured: CPU model and cores, GPU, platform, date.

    Returns:
        ``cpu`` (model name), ``cpu_cores``, ``cpu_cores_usable`` (this process's affinity), ``platform``,
        ``python``, ``date`` (YYYY-MM-DD), and ``torch`` / ``gpu`` when torch is installed / sees a CUDA GPU.
        The benchmark appendix prints it above its tables.
    """
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
