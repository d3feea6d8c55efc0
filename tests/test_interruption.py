"""Interrupted and concurrent training runs, tested on real `prosocial train` processes (smoke preset), not mocks.

- SIGKILL while a checkpoint is being written: the rerun drops the half-written checkpoint and resumes from the
  newest complete one, to the very weights of a run never interrupted.
- Ctrl-C (SIGINT): one line naming the checkpoint a rerun resumes from, no traceback, exit status 130; the resumed
  stage's ``train_loss`` is the mean over the whole run, as an uninterrupted run's.
- Two processes on one stage folder: the second is refused while the first is alive (naming its pid), whatever its
  config, and leaves the first one's checkpoints alone; once the first is killed, a rerun resumes its checkpoints.

Each test starts one training process (about 10 s of imports on 2 cores) and kills it within seconds of its first
checkpoint.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prosocial_lib.cli import main
from prosocial_lib.runs import OWNER_NAME, file_digests, read_json
from prosocial_lib.train.checkpoints import COMPLETE, TRAINER_STATE, checkpoints, is_complete

ROOT = Path(__file__).resolve().parents[1]
STEPS = 40  # long enough to be killed mid-run, short enough to finish in seconds in-process


def _args(runs: Path, steps: int = STEPS, *extra: str) -> list[str]:
    return ["train", "--stage", "1", "--preset", "smoke", "--no-progress", "--runs-dir", str(runs),
            "--set", f"stage1.max_steps={steps}", "--set", "stage1.save_steps=1", "--set", "model.threads=1", *extra]


def _start(runs: Path, steps: int = STEPS) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "prosocial_lib.cli", *_args(runs, steps)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_until(proc: subprocess.Popen, ready, timeout: float = 180.0) -> None:
    """Poll every millisecond until ``ready()``; fail when the process ends first."""
    end = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the training process ended (rc {proc.returncode}) before the test could interrupt it:\n"
                        f"{err[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail("the training process wrote no checkpoint in time")
        time.sleep(0.001)


def _trainer_dir(runs: Path) -> Path:
    return runs / "smoke" / "stage1" / "trainer"


def _stage(runs: Path) -> tuple[dict, dict]:
    folder = runs / "smoke" / "stage1"
    return read_json(folder / "metrics.json"), file_digests(folder)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The same stage never interrupted: its metrics and weight digests."""
    runs = tmp_path_factory.mktemp("straight")
    assert main(_args(runs)) == 0
    return _stage(runs)


def _assert_same_run(runs: Path, straight) -> dict:
    metrics, weights = _stage(runs)
    ref_metrics, ref_weights = straight
    assert metrics["train"]["resumed"] and metrics["train"]["global_step"] == STEPS
    assert weights == ref_weights == metrics["weights"]  # bit-identical weights, recorded in metrics.json
    assert metrics["after"] == ref_metrics["after"]  # the same weights score the same
    # the mean over all the stage's steps, not over the steps after the resume
    assert metrics["train"]["train_loss"] == pytest.approx(ref_metrics["train"]["train_loss"], rel=1e-9)
    assert not _trainer_dir(runs).exists()
    return metrics


def test_sigkill_while_writing_a_checkpoint_resumes_from_the_newest_complete_one(tmp_path, straight, caplog):
    runs = tmp_path / "runs"
    proc = _start(runs)

    def half_written() -> bool:  # a complete checkpoint, and a newer one the Trainer is still writing
        found = checkpoints(_trainer_dir(runs))
        return len(found) >= 2 and is_complete(found[-2]) and not (found[-1] / COMPLETE).exists()

    _wait_until(proc, half_written)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    found = checkpoints(_trainer_dir(runs))
    complete = [p for p in found if is_complete(p)]
    assert complete and not is_complete(found[-1]), [sorted(f.name for f in p.iterdir()) for p in found]
    assert not (found[-1] / TRAINER_STATE).exists() or not (found[-1] / COMPLETE).exists()

    with caplog.at_level("WARNING"):
        assert main(_args(runs)) == 0
    assert f"resuming the interrupted run in {_trainer_dir(runs)} from {complete[-1].name}" in caplog.text
    assert f"dropped incomplete checkpoint(s) {found[-1].name}" in caplog.text
    _assert_same_run(runs, straight)


def test_ctrl_c_prints_one_line_and_the_resumed_run_has_the_whole_run_loss(tmp_path, straight):
    runs = tmp_path / "runs"
    proc = _start(runs)
    _wait_until(proc, lambda: any(is_complete(p) and int(p.name.split("-")[1]) >= 3
                                  for p in checkpoints(_trainer_dir(runs))))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    m = re.fullmatch(r"prosocial train: interrupted; rerun the same command to resume from checkpoint-(\d+) "
                     r"\(in (.+)\)", last)
    assert m, err[-3000:]
    assert Path(m.group(2)) == _trainer_dir(runs) and is_complete(_trainer_dir(runs) / f"checkpoint-{m.group(1)}")
    assert not (runs / "smoke" / "stage1" / "metrics.json").exists()

    assert main(_args(runs)) == 0
    _assert_same_run(runs, straight)


def test_a_second_process_is_refused_while_the_first_one_trains(tmp_path, straight, capsys):
    runs = tmp_path / "runs"
    first = _start(runs, steps=STEPS)
    trainer_dir = _trainer_dir(runs)
    _wait_until(first, lambda: any(is_complete(p) for p in checkpoints(trainer_dir)))
    stage_dir = runs / "smoke" / "stage1"
    marker = (trainer_dir / "fingerprint.txt").read_text()
    # the same command, and another config, while the first process is alive: refused, nothing touched
    for extra in ([], ["--set", "stage1.learning_rate=1e-3"]):
        assert main(_args(runs, STEPS, *extra)) == 1
        err = capsys.readouterr().err
        assert (f"another training process (pid {first.pid}) is writing {stage_dir}; wait for it or use another "
                "--run-name") in err, err
        assert first.poll() is None, "the first process ended before the second one could be refused"
        assert (trainer_dir / "fingerprint.txt").read_text() == marker
        assert (stage_dir / OWNER_NAME).read_text().strip() == str(first.pid)
    first.send_signal(signal.SIGKILL)
    first.wait(60)
    # the OS released the dead process's lock: a rerun takes over and resumes its checkpoints
    assert main(_args(runs)) == 0
    _assert_same_run(runs, straight)
    assert not (stage_dir / OWNER_NAME).exists()
