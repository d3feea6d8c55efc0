"""Two CPU processes (torchrun, gloo) train to the same losses as one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, sys, warnings
    warnings.simplefilter("ignore")
    import torch
    torch.set_num_threads(1)
    from prosocial_lib.config import get_config
    from prosocial_lib.train.stages import run_stage
    runs, name, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = get_config("smoke", {"runs_dir": runs, "run_name": name, "model.threads": 1, "stage1.max_groups": 8,
                               "stage1.max_steps": 4, "stage1.batch_size": batch, "stage1.learning_rate": 3e-3,
                               "stage1.warmup_ratio": 0.0, "stage1.logging_steps": 1, "stage1.eval_groups": 4})
    r = run_stage(cfg, 1, progress=False)
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        print("RESULT " + json.dumps({"log": [h for h in r.log_history if "loss" in h], "after": r.metrics["after"]}))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], cwd) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    script = tmp_path / "train_one_stage.py"
    script.write_text(SCRIPT)
    runs = str(tmp_path / "runs")
    one = _run([sys.executable, str(script), runs, "single", "4"], tmp_path)
    two = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                "127.0.0.1", "--master_port", str(_free_port()), str(script), runs, "ddp", "2"], tmp_path)
    assert [h["step"] for h in two["log"]] == [1, 2, 3, 4]
    for a, b in zip(one["log"], two["log"]):
        for key in ("loss", "ce", "npair", "contrastive_accuracy", "margin"):
            assert b[key] == pytest.approx(a[key], rel=2e-3, abs=2e-4), (key, a, b)
    # the models after training agree too (gradients were synchronised, not just the logged losses)
    for key in ("npair", "ce", "margin"):
        assert two["after"][key] == pytest.approx(one["after"][key], rel=2e-3, abs=2e-4)
