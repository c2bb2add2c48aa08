"""The commands on a spec with ``[model] candidates``: ``study`` screens the candidates
(`screen.screen`), prints the ranking and runs one study per kept candidate through the one-study
path, each study recording the screen; ``worker`` and ``report`` take the candidates' studies that
the study DB holds (those a ``study`` kept), without screening again."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from sweeper.cache import PrefixCache
from sweeper.errors import UserError
from sweeper.interrupts import signals_interrupt
from sweeper.outcomes import CommandInterrupted, ScreenedOutcome, StudyOutcome, screen_lines
from sweeper.proxy_client import check_proxy, is_proxy_url
from sweeper.reachable import check_tracking_store, storage_url, study_exists
from sweeper.redact import redact
from sweeper.report import check_report_folder, spec_files
from sweeper.screen import ScreenResult, screen
from sweeper.settings import Options, Settings, resolve, resolve_candidates
from sweeper.spec import Spec, load_spec
from sweeper.storage import make_storage


def study_screened(
    spec: Spec, options: Options, console: Console, study_one: Callable[[Settings], StudyOutcome]
) -> ScreenedOutcome:
    """Screen the spec's candidates, then run ``study_one`` (the `study` command on one study) on
    the settings of each kept candidate, in rank order, with the screen to record on its study."""
    settings = resolve(options, spec)
    studies = {s.spec.study.name: s for s in resolve_candidates(options, spec)}
    # the stores' addresses and the report folders before the screen's minutes, not after them
    check_tracking_store(settings.tracking_uri)
    if is_proxy_url(settings.storage):
        check_proxy(settings.storage)
    else:
        storage_url(settings.storage)  # one that is no database URL is refused
    for candidate in studies.values():
        check_report_folder(candidate.out)
    console.print(f"screen: {len(spec.model.candidates)} candidates on their frozen features")
    result = _screened(spec, settings, console)
    for line in screen_lines(result):
        console.print(line)
    recorded = result.to_json()
    outcomes = [study_one(dataclasses.replace(studies[c.study], screen=recorded)) for c in result.kept]
    return ScreenedOutcome(result, outcomes)


def _screened(spec: Spec, settings: Settings, console: Console) -> ScreenResult:
    """The screen, which a Ctrl-C or SIGTERM stops with a message of its own: it writes nothing
    but cache entries, so nothing is left half-made (no study exists yet)."""
    cache = PrefixCache(settings.cache_dir) if settings.cache_dir is not None else None
    with signals_interrupt():
        try:
            return screen(spec, settings.device, cache, console.print)
        except KeyboardInterrupt as exc:
            raise CommandInterrupted(
                "the screen was stopped before it ranked the candidates; no study was started "
                "(the frozen features it computed stay in the cache for the next screen)",
                getattr(exc, "exit_code", 130),
            ) from None


def studied_candidates(options: Options, spec: Spec) -> list[Settings]:
    """The settings of each candidate whose study the study DB holds (read only: nothing is
    created); none is a UserError saying to run `study` first, which screens."""
    candidates = resolve_candidates(options, spec)
    found = [settings for settings in candidates if _exists(settings)]
    if not found:
        names = ", ".join(repr(settings.spec.study.name) for settings in candidates)
        raise UserError(
            f"{spec.source_path}: no study of its [model] candidates ({names}) in "
            f"{redact(candidates[0].storage)}; run `python -m sweeper study {spec.source_path}` first: it "
            "screens the candidates and starts a study of each one it keeps"
        )
    return found


def _exists(settings: Settings) -> bool:
    name = settings.spec.study.name
    if not is_proxy_url(settings.storage):
        return study_exists(settings.storage, name)
    check_proxy(settings.storage)  # a worker through the storage proxy
    return name in {study.study_name for study in make_storage(settings.storage).get_all_studies()}


def report_settings(named: list[Path], options: Options) -> tuple[list[Settings], bool]:
    """The studies `report` covers, and whether several get one table across them (several
    specs, a folder, or candidates with more than one study): a spec with candidates stands for
    the studies of its candidates that the DB holds, each reported in ``DIR/<its name>/``."""
    paths = spec_files(named)
    several = len(named) > 1 or named[0].is_dir()
    out = options.out or Path("reports")
    found: list[Settings] = []
    for spec in map(load_spec, paths):
        if spec.model.candidates is not None:
            found += studied_candidates(options, spec)
        elif several:
            found.append(resolve(dataclasses.replace(options, out=out / spec.study.name), spec))
        else:
            found.append(resolve(options, spec))
    return found, several or len(found) > 1
