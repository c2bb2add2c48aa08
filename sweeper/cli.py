"""python -m sweeper {study,worker,report}: each subcommand parses its arguments and makes one call."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from sweeper.errors import UserError
from sweeper.redact import redact


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        help="study database URL (default: $SWEEPER_STORAGE, else sqlite:///sweeper.db)",
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sweeper",
        description="Freeze the pretrained backbone or fine-tune it? An Optuna study per dataset, "
        "every trial an MLflow run, and a report that decides.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    study = commands.add_parser("study", help="run (or continue) a study up to its trial budget")
    study.add_argument("spec", nargs="?", type=Path, help="study spec (default: studies/vader-minilm.toml)")
    study.add_argument(
        "--trials",
        type=_positive_int,
        help="the study's total of finished trials (default: [budget] trials)",
    )
    study.add_argument("--timeout", type=_positive_float, help="stop starting trials after S seconds")
    study.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    study.add_argument("--out", type=Path, help="report folder (default: reports/<study name>/)")
    _common(study)

    report = commands.add_parser("report", help="write report.md, report.html and report.json")
    report.add_argument("spec", type=Path, help="study spec")
    report.add_argument("--out", type=Path, help="report folder (default: reports/<study name>/)")
    _common(report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(highlight=False, soft_wrap=True)
    from sweeper import runner  # heavy imports after --help

    options = runner.Options(
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        trials=getattr(args, "trials", None),
        timeout=getattr(args, "timeout", None),
        device=getattr(args, "device", None),
        out=args.out,
    )
    try:
        if args.command == "study":
            outcome = runner.run_study(args.spec or runner.default_spec_path(), options, console)
        else:
            outcome = runner.make_report(args.spec, options)
    except UserError as exc:
        console.print(f"[red]error:[/red] {escape(redact(str(exc)))}")
        return exc.exit_code
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]: running trials were marked failed and their runs ended")
        return 130
    _print_outcome(console, outcome, options)
    return 0


def _print_outcome(console: Console, outcome: dict, options) -> None:
    report, out, tracker = outcome["report"], outcome["out"], outcome["tracker"]
    storage = _absolute_sqlite(options.storage_url())
    tracking = _absolute_sqlite(options.tracking())
    console.print(f"\n[bold]decision: {report['decision'].replace('_', ' ')}[/bold]")
    console.print(f"  {escape(report['reason'])}")
    console.print(f"report:   {out}/report.md, report.html, report.json")
    console.print(f"study DB: {redact(storage)}   (optuna-dashboard {redact(storage)})")
    console.print(f"MLflow:   {redact(tracking)}")
    if tracking.startswith("sqlite:"):
        console.print(f"open it:  mlflow ui --backend-store-uri {tracking} --port 5000")
        console.print(f"          then {tracker.runs_url()}")
    else:
        console.print(f"open it:  {tracker.runs_url(redact(tracking).rstrip('/'))}")


def _absolute_sqlite(url: str) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str(Path(url.removeprefix(prefix)).resolve())
    return url


if __name__ == "__main__":
    sys.exit(main())
