"""Progress reporting: one callable ``progress(fraction, message)`` type.

:func:`terminal_progress` draws a bar on stderr when it is a terminal and
stays silent otherwise (logs, CI, Glance use their own reporters).
"""

import sys
import time


def silent(fraction, message):
    pass


class TerminalBar:
    def __init__(self, stream=None, width=30, min_interval=0.1):
        self.stream = stream or sys.stderr
        self.width = width
        self.min_interval = min_interval
        self._last = 0.0
        self._started = time.monotonic()

    def __call__(self, fraction, message):
        now = time.monotonic()
        if fraction < 1.0 and now - self._last < self.min_interval:
            return
        self._last = now
        fraction = max(0.0, min(1.0, fraction))
        filled = int(self.width * fraction)
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"\r[{bar}] {fraction * 100:5.1f}% {now - self._started:6.1f}s {message[:40]:<40}"
        self.stream.write(line)
        if fraction >= 1.0:
            self.stream.write("\n")
        self.stream.flush()


def terminal_progress(enabled=True):
    if enabled and sys.stderr.isatty():
        return TerminalBar()
    return silent
