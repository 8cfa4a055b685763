"""Progress that reads well on a terminal and in a log file.

On a terminal (stderr is a TTY): tqdm bars. Otherwise (output sent to a file, a pipe, a notebook cell that
streams a subprocess): no carriage returns and no bar characters, one timestamped line per update at most
every LOG_INTERVAL_S seconds (30 by default; the RSNA_LOG_INTERVAL or TQDM_MININTERVAL environment variable
changes it) and one at the end, each with the count, the elapsed time and the rate.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable

from tqdm import tqdm

LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%), {elapsed} elapsed, {rate_fmt}{postfix}"


def interactive() -> bool:
    """Whether progress goes to a terminal (stderr is a TTY)."""
    return sys.stderr.isatty()


def log_interval_s() -> float:
    """Seconds between two progress lines in a log file."""
    return float(os.environ.get("RSNA_LOG_INTERVAL") or os.environ.get("TQDM_MININTERVAL") or 30.0)


def stamp(message: str) -> str:
    """A log line: the local date and time, then the message."""
    return f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"


def tagged(line: str, tag: str) -> str:
    """A line of another process's output marked as its (`[tag]`): after the time stamp where it has one (the
    log stays sorted by time at the start of each line), else in front."""
    stamped = len(line) > 20 and line[:4].isdigit() and line[4] == "-" and line[10] == " " and line[19] == " "
    return f"{line[:20]}[{tag}] {line[20:]}" if stamped else f"[{tag}] {line}"


def log(message: str, file=None) -> None:
    """Print one timestamped line (stdout by default), flushed at once."""
    print(stamp(message), file=file or sys.stdout, flush=True)


class _LogLines(tqdm):
    """tqdm that writes whole timestamped lines instead of redrawing one line with carriage returns."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":  # tqdm clearing its line: nothing to clear in a log (False: no carriage return after it)
            return False
        print(stamp(msg or self.__str__()), file=self.fp, flush=True)
        return True

    def close(self) -> None:
        if not self.disable and self.last_print_n != self.n:  # the final count, once
            self.display()
            self.last_print_n = self.n
        self.leave = False
        super().close()


def progress(iterable: Iterable | None = None, desc: str = "", total: int | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on a terminal; timestamped lines at a bounded rate in a log file (module docstring)."""
    if interactive():
        return tqdm(iterable, desc=desc, total=total, **kwargs)
    interval = log_interval_s()
    kwargs.update(mininterval=interval, maxinterval=interval, miniters=1, bar_format=LOG_FORMAT)
    return _LogLines(iterable, desc=desc, total=total, **kwargs)


def first_line(err: BaseException) -> str:
    """An exception as one line: its type and the first non-empty line of its message."""
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
