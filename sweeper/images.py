"""Every image of an image folder decoded once, in full, when the data loads: an image that does
not decode is named before any work, instead of failing every trial deep inside a DataLoader.

Decoding runs in a thread pool (PIL releases the GIL while it decodes), with a progress bar on a
terminal. What cannot be decoded is refused with one UserError naming the files, or, where the spec
says ``[data] on_missing = "drop"``, skipped, counted and logged. A :class:`DecodedRecord` in the
cache folder remembers the files that decoded (by path, size and modification time), so that the
workers and commands started after a check skip them (workers started together each decode).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sweeper.errors import UserError

log = logging.getLogger(__name__)

SHOWN = 5  # files named in a message; the others are counted
CHUNK = 64  # images per task: a million files make thousands of tasks, not a million futures


@dataclass(frozen=True)
class Undecodable:
    """An image file that PIL cannot decode, and why, in a few words."""

    path: str
    reason: str


Stamp = tuple[int, int]  # a file's size and modification time (ns)


class DecodedRecord:
    """The image files that decoded in full before, by path, size and modification time, in a
    small SQLite file of the cache folder (shared by the processes that use the folder). A file
    written since has another stamp and is decoded again. Best effort: a record that cannot be
    opened, read or written (a full or read-only disk) is logged once and left out, and every
    file is decoded; it never fails the data's loading."""

    NAME = "decoded-images.sqlite3"

    def __init__(self, folder: Path) -> None:
        self.path = folder / self.NAME
        self._warned = False

    def decoded(self, stamps: dict[str, Stamp]) -> set[str]:
        """The files among ``stamps`` recorded with the same stamp."""
        try:
            with closing(self._connect()) as db:
                known = {
                    row[0]: (row[1], row[2]) for row in db.execute("SELECT path, size, mtime_ns FROM decoded")
                }
        except (sqlite3.Error, OSError) as exc:
            self._warn(exc)
            return set()
        return {path for path, stamp in stamps.items() if known.get(path) == stamp}

    def add(self, stamps: dict[str, Stamp]) -> None:
        """Record these files as decoded, with their stamps from before they were decoded."""
        try:
            with closing(self._connect()) as db, db:
                db.executemany(
                    "INSERT OR REPLACE INTO decoded VALUES (?, ?, ?)", [(p, *s) for p, s in stamps.items()]
                )
        except (sqlite3.Error, OSError) as exc:
            self._warn(exc)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=60)
        db.execute(
            "CREATE TABLE IF NOT EXISTS decoded (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER)"
        )
        return db

    def _warn(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "the record of decoded images %s is not usable (%s); every image is decoded", self.path, exc
            )


def undecodable_images(
    paths: Sequence[str], show_progress: bool | None = None, record: DecodedRecord | None = None
) -> list[Undecodable]:
    """The files among ``paths`` that do not decode in full as training will read them (opened,
    then converted to RGB), in the order given.

    Args:
        paths: image files.
        show_progress: a progress bar on stderr; by default where stderr is a terminal and this
            is not a worker process (several workers would draw over each other).
        record: the files decoded before, not decoded again; those that decode now are added.

    Example:
        >>> undecodable_images(["cat/1.png", "cat/2.jpg"])
        [Undecodable(path='cat/2.jpg', reason='empty file')]
    """
    stamps = _stamps(paths) if record is not None else {}
    known = record.decoded(stamps) if record is not None else set()
    todo = [path for path in paths if path not in known]
    chunks = [todo[i : i + CHUNK] for i in range(0, len(todo), CHUNK)]
    found: list[Undecodable] = []
    with _progress_bar(len(todo), show_progress) as advance, ThreadPoolExecutor() as pool:
        for failures, done in pool.map(_check_chunk, chunks):
            found += failures
            advance(done)
    if record is not None and todo:
        bad = {b.path for b in found}
        record.add({path: stamps[path] for path in todo if path not in bad and path in stamps})
    return found


def _stamps(paths: Sequence[str]) -> dict[str, Stamp]:
    """Each file's stamp, taken before it is decoded (a file that cannot be read has none)."""
    stamps = {}
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            continue
        stamps[path] = (stat.st_size, stat.st_mtime_ns)
    return stamps


def decodable_images(
    paths: Sequence[str], labels: Sequence[int], root: Path, drop: bool, record: DecodedRecord | None = None
) -> tuple[list[str], list[int], int]:
    """The images of the folder ``root`` that decode, with their labels, and how many were dropped.

    Raises UserError naming the files that do not decode, unless ``drop``: then they are skipped
    and logged. ``record``: the files decoded before (`DecodedRecord`)."""
    bad = undecodable_images(paths, record=record)
    if not bad:
        return list(paths), list(labels), 0
    named = ", ".join(f"{_relative(b.path, root)} ({b.reason})" for b in bad[:SHOWN])
    more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    what = f"{len(bad)} of {len(paths)} images in {root} do not decode: {named}{more}"
    if not drop:
        raise UserError(
            f'[data] {what}; replace or remove them, or set [data] on_missing = "drop" to skip them'
        )
    log.warning('[data] %s; dropped (on_missing = "drop")', what)
    skipped = {b.path for b in bad}
    kept = [(p, label) for p, label in zip(paths, labels, strict=True) if p not in skipped]
    return [p for p, _ in kept], [label for _, label in kept], len(bad)


def _check_chunk(paths: Sequence[str]) -> tuple[list[Undecodable], int]:
    failures = []
    for path in paths:
        reason = _why_undecodable(path)
        if reason is not None:
            failures.append(Undecodable(path, reason))
    return failures, len(paths)


def _why_undecodable(path: str) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as image:
            image.convert("RGB")  # decodes every pixel, as training's loader does
    except UnidentifiedImageError:
        return "not an image format PIL reads"
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError... on a broken file
        return _short(exc, path)
    return None


def _short(exc: Exception, path: str) -> str:
    text = str(exc).replace(repr(path), "").replace(path, "").strip() or type(exc).__name__
    line = text.splitlines()[0]
    return line if len(line) <= 80 else line[:77] + "..."


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


@contextmanager
def _progress_bar(total: int, show: bool | None) -> Iterator[Callable[[int], None]]:
    """A transient progress bar on stderr (or nothing); gives ``advance(n)``."""
    console = Console(stderr=True)
    if show is None:
        show = console.is_terminal and multiprocessing.parent_process() is None
    columns = (TextColumn("decoding images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not show) as progress:
        task = progress.add_task("decode", total=total)
        yield lambda n: progress.advance(task, n)
