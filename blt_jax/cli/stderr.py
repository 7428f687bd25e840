"""The process's stderr as the CLI shares it: the one-line error must stay one whole line.

When a checkpoint write fails, Orbax's and tensorstore's background threads are still printing
(log records, tracebacks of callbacks into closed event loops) while the main thread prints the
command's one-line error. Interleaved, that line could start in the middle of another thread's
line, where neither a reader nor `grep '^blt-jax'` finds it. Every Python-level write to stderr
(logging, tracebacks, progress bars) goes through `sys.stderr`; `Shared` wraps it to serialise
writes and to remember whether the last one ended its line.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, TextIO


class Shared:
    """A text stream that forwards to `stream`, one writer at a time, knowing whether the next write
    starts a line. Everything but `write` is the wrapped stream's (fileno, isatty, encoding...)."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._lock = threading.Lock()
        self.at_line_start = True

    def write(self, text: str) -> int:
        with self._lock:
            written = self._stream.write(text)
            if text:
                self.at_line_start = text.endswith("\n")
            return written

    def last_line(self, line: str, *, hold: bool = False) -> None:
        """Writes `line` on a line of its own (after a newline if another writer left one open).

        Args:
          line: the text, without its newline.
          hold: keep every other writer out afterwards (the caller ends the process at once).
        """
        # A writer stuck on a full pipe must not hide the error: after a while, write regardless.
        locked = self._lock.acquire(timeout=5)
        try:
            self._stream.write(("" if self.at_line_start else "\n") + line + "\n")
            self._stream.flush()
            self.at_line_start = True
        finally:
            if locked and not hold:
                self._lock.release()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def share() -> Shared:
    """Wraps `sys.stderr` once (idempotent) and returns the wrapper."""
    if not isinstance(sys.stderr, Shared):
        sys.stderr = Shared(sys.stderr)
    return sys.stderr
