"""Time from `python -m sweeper study` to a confirmed report, on the default study, for two
versions of sweeper in one run: a git revision (the "before") and the working tree (the "after").

Each version runs in a fresh folder with its own study DB, MLflow store and frozen-prefix cache
(cold), exactly as a new user would: `study` (no argument: the default study of that version),
then `report studies/vader-minilm.toml`. The versions run one after the other, on the same
machine, in the same invocation; report.json of each is kept beside the timings.

    python bench/time_to_decision.py --before d268fa3 --out bench/time_to_decision.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def checkout(revision: str | None, into: Path) -> Path:
    """The sources of ``revision`` (None: the working tree) in ``into``."""
    if revision is None:
        shutil.copytree(REPO, into, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "reports"))
    else:
        into.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", revision], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def timed(command: list[str], cwd: Path, env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed in {cwd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def measure(name: str, revision: str | None, source: Path, work: Path) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(source),
        "HF_HUB_OFFLINE": "1",
        "SWEEPER_CACHE_DIR": str(work / f"{name}-cache"),
    }
    env.pop("SWEEPER_STORAGE", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    study = timed([sys.executable, "-m", "sweeper", "study"], source, env)
    report = timed([sys.executable, "-m", "sweeper", "report", "studies/vader-minilm.toml"], source, env)
    decided = json.loads((source / "reports" / "vader-minilm" / "report.json").read_text())
    print(f"{name}: study {study:.0f} s, report {report:.0f} s: {decided['decision']}", flush=True)
    return {"revision": revision or "working tree", "study_seconds": study, "report_seconds": report,
            "total_seconds": study + report, "report": decided}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision of the earlier version")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "time_to_decision.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sweeper-bench-") as work:
        versions = (("before", args.before), ("after", None))
        # both checked out first: the working tree as it is now, whatever changes while "before" runs
        sources = {name: checkout(rev, Path(work) / name) for name, rev in versions}
        results = {name: measure(name, rev, sources[name], Path(work)) for name, rev in versions}
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
