"""The stage-2 sweep: grid parsing, the choice rule by hand, and a smoke sweep end to end through the CLI."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from prosocial_lib.cli import main
from prosocial_lib.cli.sweep import recorded_command
from prosocial_lib.config import get_config
from prosocial_lib.eval.sweep import choose, grid_points, load_sweep, parse_grid
from prosocial_lib.eval.systems import EvaluationError

torch.set_num_threads(1)


def test_recorded_command_leaves_out_the_runs_folder():
    assert recorded_command(["sweep", "--runs-dir", "/tmp/x", "--preset", "cpu", "--runs-dir=/y", "--grid",
                             "loss.tau=0.5,1"]) == "prosocial sweep --preset cpu --grid loss.tau=0.5,1"


def test_parse_grid():
    assert parse_grid(["loss.tau=0.5,1", "loss.npair_weight=2"]) == {"loss.tau": [0.5, 1], "loss.npair_weight": [2]}
    for bad, match in ((["loss.tau"], "key=v1"), (["loss.tau="], "no values"),
                       (["loss.tau=1", "loss.tau=2"], "twice")):
        with pytest.raises(EvaluationError, match=match):
            parse_grid(bad)


def test_grid_points_mark_the_reference_and_refuse_bad_values():
    cfg = get_config("smoke")
    points = grid_points(cfg, {"loss.tau": [cfg.loss.tau, 0.5], "loss.npair_weight": [1.0]})
    assert points == [{}, {"loss.tau": 0.5, "loss.npair_weight": 1.0}]
    with pytest.raises(EvaluationError, match="sweep grid point"):
        grid_points(cfg, {"loss.tau": [-1.0]})


def test_choose_by_hand():
    t = pd.DataFrame({"accuracy": [0.70, 0.75, 0.74, float("nan")], "groups": [100] * 4,
                      "ce": [1.0, 2.0, 1.5, 0.1]})
    # 0.75 is best; 0.74 is within one group (0.01) of it and has the lower CE; NaN is never chosen
    assert choose(t) == 2
    t.loc[2, "accuracy"] = 0.73
    assert choose(t) == 1
    with pytest.raises(EvaluationError):
        choose(t.assign(accuracy=float("nan")))


def test_smoke_sweep_through_the_cli(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    rc = main(["sweep", "--preset", "smoke", "--runs-dir", str(tmp_path / "runs"), "--grid", "loss.npair_weight=0.5,1.0",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    table, record = load_sweep(out)
    assert list(table["point"]) == ["λ = 0.5", "reference"]  # the smoke config's own lambda is 1.0
    assert table["chosen"].sum() == 1 and table["groups"].min() > 0
    assert record["preset"] == "smoke" and record["grid"] == {"loss.npair_weight": [0.5, 1.0]}
    assert record["command"].startswith("prosocial sweep") and "date" in record["machine"]
    assert str(tmp_path / "runs") not in record["command"]  # the book page shows it: no machine paths
    assert "chosen:" in capsys.readouterr().out
    # a rerun reuses every finished point
    assert main(["sweep", "--preset", "smoke", "--runs-dir", str(tmp_path / "runs"), "--grid", "loss.npair_weight=0.5,1.0",
                 "--out", str(out), "--no-progress"]) == 0
    assert load_sweep(out)[0]["reused"].all()
    assert load_sweep(tmp_path / "none.json") is None
    (tmp_path / "bad.json").write_text(json.dumps({"rows": [{"x": 1}]}))
    with pytest.raises(EvaluationError, match="lack"):
        load_sweep(tmp_path / "bad.json")
