"""Progress bars, one per layer in flight: bytes, rate and ETA, on a terminal only.

The rendering of ``ops.progress.Transfers`` (the operations keep the state).
A ``TerminalTransfers`` board owns the bottom lines of the terminal: it redraws its
active bars in place (ANSI "cursor up" and "erase line"), at most ten times
a second, and prints a finished bar once as a plain line above them. Notes
go through ``note`` so they land above the bars instead of through them.
When disabled (``-q``, or stderr not a TTY) bars cost nothing and draw
nothing; notes still print unless the caller drops them.

Bars are updated from the trio thread only (upload and download callbacks),
so the board needs no lock.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

from r8imfs._units import human_size
from r8imfs.ops.progress import Bar, Transfers

INTERVAL = 0.1
BAR_WIDTH = 24


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.5))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_line(label: str, done: int, total: int | None, elapsed: float, width: int = 100) -> str:
    """One bar as text: ``label [####----] 1.0 MiB / 4.0 MiB 2.0 MiB/s ETA 0:02``."""
    rate = done / elapsed if elapsed > 0 else 0.0
    speed = f"{human_size(int(rate))}/s"
    if total:
        frac = min(1.0, done / total)
        filled = int(frac * BAR_WIDTH)
        bar = "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "]"
        eta = format_eta((total - done) / rate) if rate > 0 else "-:--"
        tail = f"{bar} {human_size(done)} / {human_size(total)}  {speed}  ETA {eta}"
    else:
        tail = f"{human_size(done)}  {speed}"
    room = max(8, width - len(tail) - 2)
    if len(label) > room:
        label = label[: room - 1] + "…"
    return f"{label}  {tail}"


def format_done(label: str, done: int, elapsed: float) -> str:
    rate = done / elapsed if elapsed > 0 else 0.0
    return f"{label}  done: {human_size(done)} in {elapsed:.1f}s ({human_size(int(rate))}/s)"


def bar_line(bar: Bar, width: int) -> str:
    if bar.finished is not None:
        return format_done(bar.label, bar.done, bar.elapsed)
    return format_line(bar.label, bar.done, bar.total, bar.elapsed, width)


class TerminalTransfers(Transfers):
    """``Transfers`` drawn on ``stream`` (bars only when ``enabled``; notes always)."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        enabled: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(clock=clock)
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._drawn = 0
        self._last = 0.0

    @classmethod
    def terminal(cls, quiet: bool, stream: TextIO | None = None) -> TerminalTransfers:
        """Enabled when not quiet and the stream is a terminal."""
        stream = stream or sys.stderr
        return cls(stream, enabled=not quiet and _isatty(stream))

    def bar(self, label: str, total: int | None = None) -> Bar:
        bar = Bar(self, label, total)
        if self.enabled:
            self.active.append(bar)
            self.changed(force=True)
        return bar

    def note(self, message: str) -> None:
        """A line above the bars."""
        self._erase()
        self.stream.write(message + "\n")
        self._draw()

    def changed(self, force: bool = False) -> None:
        now = self.clock()
        if not self.enabled or (not force and now - self._last < INTERVAL):
            return
        self._last = now
        self._erase()
        for bar in [b for b in self.active if b.finished is not None]:
            self.stream.write(bar_line(bar, _width(self.stream)) + "\n")
            self.active.remove(bar)
        self._draw()

    def close(self) -> None:
        """Finish the board: leave every bar's last state on screen."""
        if self.enabled:
            for bar in self.active:
                bar.finish()
            self.changed(force=True)

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        width = _width(self.stream)
        for bar in self.active:
            self.stream.write(bar_line(bar, width) + "\n")
        self._drawn = len(self.active)
        self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _width(stream: TextIO) -> int:
    return shutil.get_terminal_size((100, 24)).columns - 1
