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


def _trial_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trials",
        type=_positive_int,
        help="the study's total of finished trials (default: [budget] trials)",
    )
    parser.add_argument("--timeout", type=_positive_float, help="stop starting trials after S seconds")
    parser.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")


def _cache_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="frozen-prefix cache folder (default: $SWEEPER_CACHE_DIR, else ~/.cache/sweeper)",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="run the frozen backbone on every batch instead of caching"
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
    _trial_options(study)
    study.add_argument(
        "--workers",
        type=_positive_int,
        help="worker processes on this machine, one GPU each where there are GPUs (default: 1)",
    )
    study.add_argument("--out", type=Path, help="report folder (default: reports/<study name>/)")
    _cache_options(study)
    _common(study)

    worker = commands.add_parser(
        "worker",
        help="join a study (from this or another machine) and run its trials until it is done",
        description="Join the spec's study in the shared study DB, creating it if new, and run "
        "trials until it holds its total of finished trials. Start workers on as many machines as "
        "you like with the same --storage and --tracking-uri.",
    )
    worker.add_argument("spec", type=Path, help="study spec")
    worker.add_argument(
        "--workers",
        type=_positive_int,
        help="worker processes on this machine (default: one per visible GPU, else 1)",
    )
    _trial_options(worker)
    _cache_options(worker)
    _common(worker)

    report = commands.add_parser("report", help="write report.md, report.html and report.json")
    report.add_argument(
        "spec",
        nargs="+",
        type=Path,
        help="study spec; several specs, or a folder of them, add one table across the studies",
    )
    report.add_argument(
        "--out",
        type=Path,
        help="report folder (default: reports/<study name>/; for several studies reports/)",
    )
    report.add_argument("--device", help="for the confirmation runs: auto (default), cpu, cuda or cuda:N")
    _common(report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(highlight=False, soft_wrap=True)
    from sweeper import runner  # heavy imports after --help
    from sweeper.study import TrialsKeepFailing
    from sweeper.worker import Interrupted, WorkersStopped

    options = runner.Options(
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        trials=getattr(args, "trials", None),
        timeout=getattr(args, "timeout", None),
        device=getattr(args, "device", None),
        out=getattr(args, "out", None),
        workers=getattr(args, "workers", None),
        cache_dir=getattr(args, "cache_dir", None),
        no_cache=getattr(args, "no_cache", False),
    )
    try:
        if args.command == "study":
            outcome = runner.run_study(args.spec or runner.default_spec_path(), options, console)
        elif args.command == "worker":
            outcome = runner.run_worker(args.spec, options, console)
        else:
            outcome = runner.make_report(args.spec, options, console)
    except UserError as exc:
        console.print(f"[red]error:[/red] {escape(redact(str(exc)))}")
        return exc.exit_code
    except (TrialsKeepFailing, WorkersStopped) as exc:
        console.print(f"[red]stopped:[/red] {escape(redact(str(exc)))}")
        return 1
    except KeyboardInterrupt as exc:
        console.print("[red]interrupted[/red]: running trials were marked failed and their runs ended")
        return exc.exit_code if isinstance(exc, Interrupted) else 130
    if args.command == "worker":
        console.print(
            f"worker done: study {outcome['study']} holds {outcome['finished']}/{outcome['total']} "
            "finished trials"
        )
    else:
        _print_outcome(console, outcome, options)
    return 0


def _print_outcome(console: Console, outcome: dict, options) -> None:
    from sweeper.runner import absolute_sqlite

    report, out, tracker = outcome.get("report"), outcome["out"], outcome["tracker"]
    storage = absolute_sqlite(options.storage_url())
    tracking = absolute_sqlite(options.tracking())
    if report is None:  # several studies: one row each
        from sweeper.render import render_summary_text

        console.print("\n" + escape(render_summary_text(outcome["reports"])))
    else:
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


if __name__ == "__main__":
    sys.exit(main())
