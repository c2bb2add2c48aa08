"""python -m sweeper {study,worker,report,storage-proxy}: each subcommand parses its arguments and makes one
call into sweeper.commands, whose outcome it prints. The heavy imports (torch, transformers,
MLflow) wait until the arguments parse, so that --help answers at once."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from sweeper.settings import DEFAULT_SPEC, Options


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
        help="trials to finish (default: [budget] trials); [budget] fe_trials feature-extraction trials come on top",
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
    _add_study(commands)
    _add_worker(commands)
    _add_report(commands)
    _add_storage_proxy(commands)
    return parser


def _add_study(commands) -> None:
    study = commands.add_parser("study", help="run (or continue) a study up to its trial budget")
    study.add_argument("spec", nargs="?", type=Path, help=f"study spec (default: {DEFAULT_SPEC})")
    _trial_options(study)
    study.add_argument(
        "--workers",
        type=_positive_int,
        help="worker processes on this machine, one GPU each where there are GPUs (default: 1)",
    )
    study.add_argument("--out", type=Path, help="report folder (default: reports/<study name>/)")
    _cache_options(study)
    _common(study)
    study.set_defaults(run=_study)


def _add_worker(commands) -> None:
    worker = commands.add_parser(
        "worker",
        help="join a study (from this or another machine) and run its trials until it is done",
        description="Join the spec's study in the shared study DB, creating it if new, and run "
        "trials until it holds its total of finished trials. Start workers on as many machines as "
        "you like with the same --storage and --tracking-uri.",
    )
    worker.add_argument("spec", nargs="?", type=Path, help=f"study spec (default: {DEFAULT_SPEC})")
    worker.add_argument(
        "--workers",
        type=_positive_int,
        help="worker processes on this machine (default: one per visible GPU, else 1)",
    )
    _trial_options(worker)
    _cache_options(worker)
    _common(worker)
    worker.set_defaults(run=_worker)


def _add_report(commands) -> None:
    report = commands.add_parser("report", help="write report.md, report.html and report.json")
    report.add_argument(
        "spec",
        nargs="*",
        type=Path,
        help=f"study spec (default: {DEFAULT_SPEC}); several specs, or a folder of them, add one "
        "table across the studies",
    )
    report.add_argument(
        "--out",
        type=Path,
        help="report folder (default: reports/<study name>/; for several studies reports/)",
    )
    report.add_argument("--device", help="for the confirmation runs: auto (default), cpu, cuda or cuda:N")
    _common(report)
    report.set_defaults(run=_report)


def _add_storage_proxy(commands) -> None:
    proxy = commands.add_parser(
        "storage-proxy",
        help="serve one study DB to many workers over a few DB connections (workers: --storage grpc://H:P)",
        description="Serve the study DB through Optuna's gRPC storage proxy, with sweeper's study "
        "lock and heartbeats, over a fixed pool of DB connections. Workers join with "
        "--storage grpc://HOST:PORT.",
    )
    proxy.add_argument(
        "--storage",
        required=True,
        help="the study database URL, e.g. postgresql+psycopg://user:pass@db/sweeper",
    )
    proxy.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0: all)"
    )
    proxy.add_argument("--port", type=_port, default=13000, help="port to listen on (default: 13000)")
    proxy.add_argument(
        "--pool-size",
        type=_positive_int,
        default=4,
        help="DB connections for all the workers' storage calls (default: 4), plus one per study lock held",
    )
    proxy.set_defaults(run=_storage_proxy)


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port, 1 to 65535, got {value}")
    return value


def _options(args: argparse.Namespace) -> Options:
    return Options(
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


def _study(args: argparse.Namespace, console: Console):
    from sweeper.commands import run_study

    return run_study(args.spec, _options(args), console)


def _worker(args: argparse.Namespace, console: Console):
    from sweeper.commands import run_worker

    return run_worker(args.spec, _options(args), console)


def _report(args: argparse.Namespace, console: Console):
    from sweeper.commands import make_report

    return make_report(args.spec, _options(args), console)


def _storage_proxy(args: argparse.Namespace, console: Console):
    from sweeper.proxy import serve_proxy

    return serve_proxy(args.storage, args.host, args.port, args.pool_size, console.print)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run its command, print the outcome; returns the exit code."""
    args = build_parser().parse_args(argv)
    console = Console(highlight=False, soft_wrap=True)
    from sweeper.commands import exit_code  # the heavy imports (torch, MLflow) after --help

    return exit_code(lambda: args.run(args, console), console)


if __name__ == "__main__":
    sys.exit(main())
