"""Run state (prosocial_lib.runs): atomic writes leave no temporary file, an unreadable cache counts as missing and
is rebuilt, a changed key recomputes, and a folder lock keeps a second process out."""

import contextlib
import json
import multiprocessing
import time
import warnings

import numpy as np
import pytest

from prosocial_lib.runs import (
    LOCK_NAME,
    atomic_path,
    build_folder_atomic,
    fingerprint,
    load_or_build,
    read_json,
    read_jsonl,
    run_lock,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)


def _files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK_NAME and not p.name.endswith(".lock"))


def test_fingerprint_is_stable_and_order_free():
    assert fingerprint({"b": 1, "a": [1, 2]}) == fingerprint({"a": [1, 2], "b": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert len(fingerprint("x")) == 12 and len(fingerprint("x", length=64)) == 64


def test_atomic_writes_leave_no_temporary_file(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "héllo")
    write_json_atomic(tmp_path / "sub" / "b.json", {"x": [1, 2]}, indent=None)
    write_jsonl_atomic(tmp_path / "c.jsonl", [{"r": "é"}, {"r": 2}])
    with atomic_path(tmp_path / "d.npz") as tmp:
        np.savez(tmp, a=np.arange(3))
    assert _files(tmp_path) == ["a.txt", "c.jsonl", "d.npz", "sub"] and _files(tmp_path / "sub") == ["b.json"]
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "sub" / "b.json").read_text() == '{"x": [1, 2]}'
    assert (tmp_path / "c.jsonl").read_text(encoding="utf-8") == '{"r": "é"}\n{"r": 2}\n'
    assert read_jsonl(tmp_path / "c.jsonl") == [{"r": "é"}, {"r": 2}]
    with np.load(tmp_path / "d.npz") as z:
        assert z["a"].tolist() == [0, 1, 2]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    write_json_atomic(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert read_json(path) == {"v": 1} and _files(tmp_path) == ["a.json"]


def test_unreadable_cache_counts_as_missing_and_is_rebuilt(tmp_path):
    path = tmp_path / "cache.json"
    path.write_text('{"key": "k", "value": ')  # truncated
    with pytest.warns(UserWarning, match="treated as missing"):
        assert read_json(path) is None
    (tmp_path / "g.jsonl").write_text('{"a": 1}\n{"a": ')
    with pytest.warns(UserWarning, match="treated as missing"):
        assert read_jsonl(tmp_path / "g.jsonl") is None
    assert read_json(tmp_path / "missing.json") is None and read_jsonl(tmp_path / "missing.jsonl") is None
    calls = []
    with pytest.warns(UserWarning):
        assert load_or_build(path, lambda: calls.append(1) or {"key": "k", "value": 7}) == ({"key": "k", "value": 7},
                                                                                           False)
    assert calls == [1] and json.loads(path.read_text()) == {"key": "k", "value": 7}


def test_load_or_build_reuses_and_rebuilds_on_key_change(tmp_path):
    path = tmp_path / "v.json"
    calls = []

    def get(key):
        def build():
            calls.append(1)
            return {"key": key, "n": len(calls)}
        return load_or_build(path, build, valid=lambda saved: key is None or saved.get("key") == key)[0]["n"]

    assert get("a") == 1
    assert get("a") == 1
    assert get("b") == 2
    assert get(None) == 2  # no key: whatever is there is accepted
    assert len(calls) == 2


def test_load_or_build_validates_forces_and_uses_any_format(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows, reused = load_or_build(path, lambda: [{"i": 0}, {"i": 1}], read=read_jsonl, write=write_jsonl_atomic)
    assert rows == [{"i": 0}, {"i": 1}] and not reused
    rows, reused = load_or_build(path, lambda: [], read=read_jsonl, write=write_jsonl_atomic)
    assert reused and rows == [{"i": 0}, {"i": 1}]
    _, reused = load_or_build(path, lambda: [{"i": 2}], read=read_jsonl, write=write_jsonl_atomic,
                              valid=lambda r: len(r) == 1)
    assert not reused and read_jsonl(path) == [{"i": 2}]
    _, reused = load_or_build(path, lambda: [{"i": 3}], read=read_jsonl, write=write_jsonl_atomic, force=True)
    assert not reused and read_jsonl(path) == [{"i": 3}]


def test_build_folder_atomic_never_leaves_a_half_built_folder(tmp_path):
    target = tmp_path / "model"

    def failing(tmp):
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        build_folder_atomic(target, failing)
    assert not target.exists() and _files(tmp_path) == []

    def ok(tmp):
        (tmp / "done").write_text("1")
        return "built"

    assert build_folder_atomic(target, ok, complete=lambda p: (p / "done").exists()) == ("built", True)
    assert build_folder_atomic(target, ok, complete=lambda p: (p / "done").exists()) == (None, False)
    assert _files(target) == ["done"] and _files(tmp_path) == ["model"]


def _hold_lock(folder, started, seconds):
    with run_lock(folder):
        started.set()
        time.sleep(seconds)


@contextlib.contextmanager
def _lock_held_by_another_process(folder, seconds=3.0):
    """A spawned process holds ``run_lock(folder)`` for ``seconds`` while the body runs; joined afterwards."""
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(folder), started, seconds))
    proc.start()
    try:
        assert started.wait(60), "the other process never took the lock"
        yield
    finally:
        proc.join(60)


def test_the_lock_keeps_a_second_process_out(tmp_path):
    from filelock import Timeout

    with _lock_held_by_another_process(tmp_path):
        with pytest.raises(Timeout):
            with run_lock(tmp_path, timeout=0.2):
                pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with run_lock(tmp_path, timeout=5):  # released when the other process is done
            pass


# ---------------------------------------------------------------------- the evaluation's caches (issue 16)
def _truncate(path):
    text = path.read_bytes()
    path.write_bytes(text[: len(text) // 2])


def test_every_evaluation_cache_is_rebuilt_when_truncated(tmp_path):
    """What a kill during a write leaves (half a file) is recomputed, with a warning naming the file, never a
    JSONDecodeError on every later call: held-out scores, gold perplexities, generations, embeddings."""
    import datasets

    from prosocial_lib.config import get_config
    from prosocial_lib.eval.comparison import gold_perplexities
    from prosocial_lib.eval.systems import VARIANTS, TrainedVariant, heldout_metrics

    cfg = get_config("smoke", {"runs_dir": str(tmp_path / "runs")})
    cache = tmp_path / "cache"
    first = heldout_metrics(cfg, "tiny", "fp-tiny", "base", cache)
    (held,) = cache.glob("heldout-*.json")
    _truncate(held)
    with pytest.warns(UserWarning, match=f"{held.name}.*treated as missing"):
        assert heldout_metrics(cfg, "tiny", "fp-tiny", "base", cache) == first
    assert read_json(held) == first

    sets = {"adversarial": datasets.Dataset.from_dict({"history": [["Hi there, I want to lie."]],
                                                       "response": ["Please don't lie."]})}
    tv = TrainedVariant(VARIANTS["base"], "tiny", "fp-tiny")
    ppl = gold_perplexities(cfg.model, tv, sets, tmp_path)
    (ppl_file,) = (tmp_path / "cache").glob("ppl-*.json")
    _truncate(ppl_file)
    with pytest.warns(UserWarning, match="treated as missing"):
        assert gold_perplexities(cfg.model, tv, sets, tmp_path) == ppl


def test_truncated_generations_and_embeddings_are_rebuilt(tmp_path):
    from prosocial_lib.config import get_config
    from prosocial_lib.eval.audit import AuditSystem, _system_replies
    from prosocial_lib.eval.judges.encoder import SentenceEncoder
    from prosocial_lib.modeling.tiny import build_tiny_model

    cfg = get_config("smoke")
    model, tok = build_tiny_model(seed=0)
    cols = {"context_id": ["a", "b", "c"], "history": [["Hello!"], ["I hit him."], ["What now?"]]}
    system = AuditSystem(name="tiny", model="tiny", max_new_tokens=4)
    path = tmp_path / "gen.jsonl"
    replies, _ = _system_replies(system, cols, path, lambda: (model, tok), cfg, False)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]))  # cut at a line end: valid JSON Lines, one context short
    again, took = _system_replies(system, cols, path, lambda: (model, tok), cfg, False)
    assert again == replies and "seconds" in took  # regenerated, not reused
    _truncate(path)
    with pytest.warns(UserWarning, match="treated as missing"):
        assert _system_replies(system, cols, path, lambda: (model, tok), cfg, False)[0] == replies

    enc = SentenceEncoder(device="cpu")
    enc._cache = {"k1": np.ones(enc.dim, np.float32), "k2": np.zeros(enc.dim, np.float32)}
    npz = tmp_path / "emb.npz"
    enc.save_cache(npz)
    _truncate(npz)
    fresh = SentenceEncoder(device="cpu")
    with pytest.warns(UserWarning, match="emb.npz.*treated as missing"):
        assert fresh.load_cache(npz) == 0
    fresh._cache = dict(enc._cache)
    with pytest.warns(UserWarning):
        fresh.save_cache(npz)  # rewrites the damaged file
    assert SentenceEncoder(device="cpu").load_cache(npz) == 2


def test_exclusive_run_refuses_a_second_writer_naming_the_pid(tmp_path):
    import os

    from prosocial_lib.runs import OWNER_NAME, RunBusyError, exclusive_run

    with _lock_held_by_another_process(tmp_path):
        with pytest.raises(RunBusyError, match=rf"another training process is writing {tmp_path}; wait"):
            with exclusive_run(tmp_path, "training process", "wait for it"):  # run_lock writes no pid file
                pass
    with exclusive_run(tmp_path) as folder:
        assert (folder / OWNER_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(RunBusyError, match=rf"another process \(pid {os.getpid()}\) is writing"):
            with exclusive_run(tmp_path):
                pass
    assert not (tmp_path / OWNER_NAME).exists()
