"""Progress bars that suit where they are shown.

:func:`bar` is ``tqdm`` with one difference: when stderr (or the stream given) is a terminal
(or the code runs in a Jupyter kernel) it is the usual live bar, otherwise — a log file, CI, a
batch job — it is a :class:`LogBar`, which writes whole lines, and only every
:data:`LOG_INTERVAL` seconds or every :data:`LOG_FRACTION` of the total, plus the final state,
instead of hundreds of carriage-return updates. No imports from the rest of tnsim.

Examples
--------
>>> import io
>>> log = io.StringIO()                       # not a terminal: sparse, whole lines
>>> with bar(total=200, desc="blocks", file=log) as b:
...     for _ in range(200):
...         _ = b.update(1)
>>> lines = log.getvalue().splitlines()
>>> len(lines), lines[0].startswith("blocks:   0%"), lines[-1].startswith("blocks: 100%")
(11, True, True)
"""

from __future__ import annotations

import math
import sys
import time

from tqdm.auto import tqdm as _live
from tqdm.std import tqdm as _std

__all__ = ["bar", "LogBar", "interactive", "LOG_INTERVAL", "LOG_FRACTION"]

#: Seconds between two lines of a :class:`LogBar` (unless :data:`LOG_FRACTION` comes first).
LOG_INTERVAL = 30.0
#: Fraction of the total between two lines of a :class:`LogBar`.
LOG_FRACTION = 0.1
#: Width of a :class:`LogBar` line (a log has no terminal width).
LOG_COLUMNS = 100


def interactive(stream=None) -> bool:
    """Whether progress on ``stream`` (default stderr) is watched live: a terminal, or a
    Jupyter kernel (where tqdm draws a widget)."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        if isatty is not None and isatty():
            return True
    except ValueError:  # a closed stream
        return False
    return stream is sys.stderr and "ipykernel" in sys.modules


class LogBar(_std):
    """A tqdm bar for logs: whole lines, at most one per :data:`LOG_INTERVAL` seconds or per
    :data:`LOG_FRACTION` of the total (whichever comes first), and the final state at close."""

    def __init__(self, *args, **kwargs):
        self._logged_n: float | None = None
        self._logged_t = -math.inf
        self._closing = False
        kwargs.setdefault("mininterval", 0)  # every update reaches display(), which decides
        kwargs.setdefault("miniters", 1)
        kwargs.setdefault("ascii", True)
        kwargs.setdefault("ncols", LOG_COLUMNS)
        super().__init__(*args, **kwargs)

    def _due(self, now: float) -> bool:
        if self._logged_n is None or self._closing:
            return True
        if self.n == self._logged_n or (self.total and self.n >= self.total):
            return False  # nothing new, or the end: close() writes the final line
        if now - self._logged_t >= LOG_INTERVAL:
            return True
        return bool(self.total) and self.n - self._logged_n >= LOG_FRACTION * self.total

    def display(self, msg=None, pos=None):
        """Write the bar as one line when a line is due (see the class docstring)."""
        if msg == "":  # tqdm clearing its line: nothing to clear in a log
            return True
        now = time.monotonic()
        if not self._due(now):
            return True
        line = str(self) if msg is None else msg
        # at close tqdm writes the newline itself
        self.fp.write(line if self._closing else line + "\n")
        self.fp.flush()
        self._logged_n, self._logged_t = self.n, now
        return True

    def clear(self, nolock=False):
        """Nothing to erase in a log."""

    def close(self):
        self._closing = True
        super().close()


def bar(iterable=None, *, file=None, **kwargs):
    """A progress bar: ``tqdm.auto.tqdm`` on a terminal, a :class:`LogBar` elsewhere.

    Takes tqdm's arguments (``total``, ``desc``, ``unit``, ``disable``, ``delay``,
    ``initial``, ...); ``file`` defaults to stderr.
    """
    stream = sys.stderr if file is None else file
    cls = _live if interactive(stream) else LogBar
    return cls(iterable, file=stream, **kwargs)
