"""Helpers for the real-world input tests: the copied case files and writers that make more bad inputs."""

import csv
import io
import json
import warnings
from pathlib import Path

from prosocial_lib.cli import main as prosocial_main
from prosocial_lib.data import DataSkipWarning

FIXTURES = Path(__file__).parent / "fixtures"
REAL = FIXTURES / "real_world"
HUB_JSONL = FIXTURES / "prosocial_hub.jsonl"
MIC_SAMPLE = FIXTURES / "mic_sample.csv"
EMBEDDED_PD = Path(__file__).resolve().parents[1] / "prosocial_lib" / "data" / "samples" / "prosocial_dialog"


def hub_rows() -> list[dict]:
    return [json.loads(line) for line in HUB_JSONL.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows, encoding: str = "utf-8", bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode(encoding))
    return path


def mic_rows() -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(MIC_SAMPLE.read_text(encoding="utf-8"))))
    return rows[0], rows[1:]


def write_mic(path: Path, header, rows, encoding: str = "utf-8") -> Path:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows([header, *rows])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


def validate_cli(capsys, path: Path, kind: str, *extra: str) -> tuple[int, str]:
    """``prosocial data validate PATH --kind KIND``: (exit code, stdout + stderr)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataSkipWarning)
        rc = prosocial_main(["data", "validate", str(path), "--kind", kind, "--preset", "smoke", *extra])
    out = capsys.readouterr()
    return rc, out.out + out.err
