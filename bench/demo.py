"""The closed-loop demo, timed: how long each phase and each retraining step takes, and what it achieved.

Runs ``atalaia demo`` (``--quick`` unless ``--full``) ``--runs`` times as a user would, each in a
fresh ATALAIA_HOME that uses the prepared models of the project's home, and reads each run's
record (``reports/demo-*.json``). Prints per run, then the median over runs: total time, the time
of each phase (start-up until the first request, normal, drift including the retraining run,
recovered and settling), each retraining step, the gate's holdout ROUGE-L (active → candidate),
the live ROUGE-L of the drift and recovered phases, the held-out questions' live ROUGE-L paired
across them (the recovery fact), and whether every loop fact held.

Stop other work first: the demo slows its users down while the model trains, but everything else
on the machine competes with training and evaluation.

Usage::

    .venv/bin/python bench/demo.py [--full] [--runs 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHASES = ("normal", "drift", "recovered", "settling")
STEPS = ("dataset", "train", "quantize", "gate", "register", "deploy")


def run_once(home: Path, quick: bool) -> dict[str, Any]:
    """Run the demo in ``home``; return its record plus the wall time of the whole command."""
    from atalaia.settings import Settings

    main = Settings()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATALAIA_")}
    env |= {"ATALAIA_HOME": str(home), "ATALAIA_MODELS_DIR": str(main.models_dir), "ATALAIA_LOG_JSON": "true"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "composition.cli.main", "demo", *(["--quick"] if quick else [])],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    records = sorted((home / "reports").glob("demo-*.json"))
    if not records:
        raise SystemExit(
            f"the demo wrote no record (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    record: dict[str, Any] = json.loads(records[-1].read_text())
    record["wall_s"] = wall
    record["exit_code"] = proc.returncode
    return record


def summarize(record: dict[str, Any]) -> dict[str, float | None]:
    """The numbers of one run: seconds per phase and step, gate and live ROUGE-L, facts held."""
    out: dict[str, float | None] = {"total_s": record["wall_s"]}
    starts = [(name, datetime.fromisoformat(ts)) for name, ts in record["phases"]]
    since = datetime.fromisoformat(record["since"])
    out["startup_s"] = (starts[0][1] - since).total_seconds() if starts else None
    for (name, ts), (_, nxt) in itertools.pairwise(starts):
        out[f"{name}_s"] = (nxt - ts).total_seconds()
    deployed = [r for r in record.get("runs", []) if r["status"] == "deployed"]
    run = deployed[-1] if deployed else (record.get("runs") or [None])[-1]
    for step in STEPS:
        out[f"step_{step}_s"] = (run or {}).get("steps", {}).get(step)
    gate = (run or {}).get("gate") or {}
    out["gate_rouge_active"] = (gate.get("active") or {}).get("rouge_l")
    out["gate_rouge_candidate"] = (gate.get("candidate") or {}).get("rouge_l")
    live = record.get("live_rouge_l", {})
    out["live_rouge_drift"] = live.get("drift", {}).get("mean")
    out["live_rouge_recovered"] = live.get("recovered", {}).get("mean")
    heldout = record.get("heldout_rouge_l") or {}
    out["heldout_pairs"] = heldout.get("pairs")
    out["heldout_rouge_drift"] = heldout.get("drift")
    out["heldout_rouge_recovered"] = heldout.get("recovered")
    out["facts_held"] = float(all(f["ok"] for f in record["facts"].values()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the full demo instead of --quick")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="run in DIR/run-N instead of temporary folders")
    args = parser.parse_args()

    rows: list[dict[str, float | None]] = []
    for i in range(args.runs):
        if args.keep:
            home = args.keep / f"run-{i + 1}"
            home.mkdir(parents=True, exist_ok=True)
            record = run_once(home, quick=not args.full)
        else:
            with tempfile.TemporaryDirectory(prefix="atalaia-bench-demo-") as tmp:
                record = run_once(Path(tmp), quick=not args.full)
        row = summarize(record)
        rows.append(row)
        print(f"run {i + 1} ({'full' if args.full else 'quick'}), exit {record['exit_code']}:")
        for key, value in row.items():
            print(f"  {key:24s} {'-' if value is None else f'{value:.3f}'}")
    if len(rows) > 1:
        print("median over runs:")
        for key in rows[0]:
            values = [r[key] for r in rows if r[key] is not None]
            print(f"  {key:24s} {statistics.median(values):.3f}" if values else f"  {key:24s} -")  # type: ignore[type-var]


if __name__ == "__main__":
    main()
