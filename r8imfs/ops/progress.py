"""Transfer progress as state: the bars of an operation's uploads and downloads.

An operation asks its ``Context.progress`` (a ``Transfers``) for one ``Bar``
per transfer and advances it with byte counts; notes go through ``note``.
``Transfers`` itself draws nothing: the CLI's ``cli.progress.TerminalTransfers``
renders bars and notes on a terminal. Bars are updated from the trio thread
only (upload and download callbacks), so nothing here needs a lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Bar:
    """One transfer. ``advance`` takes byte counts; ``finish`` freezes it."""

    def __init__(self, board: Transfers, label: str, total: int | None) -> None:
        self.board = board
        self.label = label
        self.total = total
        self.done = 0
        self.started = board.clock()
        self.finished: float | None = None

    def advance(self, n: int) -> None:
        self.done += n
        self.board.changed()

    def finish(self) -> None:
        if self.finished is None:
            self.finished = self.board.clock()
            self.board.changed(force=True)

    @property
    def elapsed(self) -> float:
        end = self.finished if self.finished is not None else self.board.clock()
        return end - self.started


class Transfers:
    """The transfers of one operation; this base keeps count and shows nothing."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.active: list[Bar] = []

    def bar(self, label: str, total: int | None = None) -> Bar:
        return Bar(self, label, total)

    def note(self, message: str) -> None:
        """A line for the user (dropped here)."""

    def changed(self, force: bool = False) -> None:
        """A bar moved; ``force``: it started or finished (a renderer redraws)."""

    def close(self) -> None:
        """Finish every bar still going."""
        for bar in list(self.active):
            bar.finish()
