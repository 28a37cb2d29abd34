"""The benchmark suite still runs: its quick sizes, every section but the peers (which need a venv of their
own), on its own throwaway cluster. It checks that each section measures something, not how fast: speed
targets live in benches/, and `make bench` judges them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ["ceiling", "forge", "latency", "enqueue", "backlog", "costs"]


def test_every_benchmark_section_runs_and_measures(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "benches" / "run.py"), "--quick", "--only", ",".join(SECTIONS),
         "--results-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    (record,) = tmp_path.glob("*.json")
    results = json.loads(record.read_text())["results"]
    measured = {row["section"] for row in results if row["median"] is not None and row["median"] > 0}
    assert measured == set(SECTIONS), f"sections without a measurement: {set(SECTIONS) - measured}"
