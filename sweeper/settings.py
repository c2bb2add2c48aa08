"""Every setting of a command, decided once. The precedence, written down once:

    command-line flag > environment variable > spec file > built-in default

``--storage`` falls back to ``$SWEEPER_STORAGE``, then ``sqlite:///sweeper.db``; ``--tracking-uri``
to ``$MLFLOW_TRACKING_URI``, then ``sqlite:///mlflow.db``; ``--device`` to ``[train] device``;
``--trials`` to ``[budget] trials``; ``--cache-dir`` to ``$SWEEPER_CACHE_DIR``, then
``$XDG_CACHE_HOME/sweeper``, then ``~/.cache/sweeper``. Relative SQLite paths and folders are made
absolute, so that worker processes and printed commands name the same files from anywhere.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from sweeper.budget import ArmBudget
from sweeper.spec import Spec
from sweeper.spec_candidates import candidate_specs

DEFAULT_STORAGE = "sqlite:///sweeper.db"
DEFAULT_TRACKING = "sqlite:///mlflow.db"
DEFAULT_SPEC = Path("studies") / "vader-minilm.toml"


@dataclass(frozen=True)
class Options:
    """The command line's settings as given (``None``: not given)."""

    storage: str | None = None
    tracking_uri: str | None = None
    trials: int | None = None
    timeout: float | None = None
    device: str | None = None
    out: Path | None = None
    workers: int | None = None
    cache_dir: Path | None = None
    no_cache: bool = False


@dataclass(frozen=True)
class Settings:
    """Every setting of one command on one spec, resolved (see the module's precedence)."""

    spec: Spec
    storage: str
    tracking_uri: str
    device: str  # auto | cpu | cuda | cuda:N
    arms: ArmBudget  # the trials of each arm (``--trials`` sets the fine-tuning arm's)
    timeout: float | None
    workers: int | None  # None: the command's own default
    cache_dir: Path | None  # the frozen-prefix cache's folder; None: no cache (--no-cache)
    out: Path  # the report folder
    screen: dict | None = None  # the candidate screen that kept this study (JSON), recorded on it

    @property
    def trials(self) -> int:
        """The study's total of finished trials."""
        return self.arms.total


def resolve(options: Options, spec: Spec) -> Settings:
    """The command's settings for ``spec``: each from its flag, else its environment variable,
    else the spec, else the default."""
    storage = options.storage or os.environ.get("SWEEPER_STORAGE") or DEFAULT_STORAGE
    tracking = options.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING
    cache_dir = (
        None if options.no_cache else (options.cache_dir or default_cache_dir()).expanduser().resolve()
    )
    return Settings(
        spec=spec,
        storage=absolute_sqlite(storage),
        tracking_uri=absolute_sqlite(tracking),
        device=options.device or spec.train.device,
        arms=ArmBudget.of(spec, options.trials),
        timeout=options.timeout,
        workers=options.workers,
        cache_dir=cache_dir,
        out=options.out or Path("reports") / spec.study.name,
    )


def resolve_candidates(options: Options, spec: Spec) -> list[Settings]:
    """With [model] candidates: the settings of each candidate's study (`spec_candidates.candidate_specs`),
    in the spec's order; each report goes to ``DIR/<its study name>/``, DIR being ``--out`` or
    reports/ (whichever candidates a screen keeps, each has its own folder there)."""
    out = options.out or Path("reports")
    return [
        resolve(dataclasses.replace(options, out=out / candidate.study.name), candidate)
        for candidate in candidate_specs(spec)
    ]


def default_cache_dir() -> Path:
    """$SWEEPER_CACHE_DIR, else $XDG_CACHE_HOME/sweeper, else ~/.cache/sweeper."""
    if os.environ.get("SWEEPER_CACHE_DIR"):
        return Path(os.environ["SWEEPER_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sweeper"


def default_spec_path() -> Path:
    """studies/vader-minilm.toml in the working directory, else the one beside this checkout."""
    if DEFAULT_SPEC.is_file():
        return DEFAULT_SPEC
    beside = Path(__file__).resolve().parents[1] / DEFAULT_SPEC
    return beside if beside.is_file() else DEFAULT_SPEC


def absolute_sqlite(url: str) -> str:
    """A relative sqlite:/// URL made absolute, so that it names the same file from anywhere."""
    prefix = "sqlite:///"
    path = url.removeprefix(prefix)
    if url.startswith(prefix) and path and not path.startswith(("/", ":memory:", "file:")):
        return prefix + str(Path(path).resolve())
    return url
