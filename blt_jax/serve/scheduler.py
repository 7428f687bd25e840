"""The serving loop: requests wait in a bounded queue, take a free decode row, and leave it at EOS, a
stop string, their byte budget or when their client goes away; one host thread drives the rows
(`inference.batching.BatchDecoder`) a chunk of steps at a time.

Requests talk to the HTTP side through a callback that the loop calls from its thread (the app turns
it into events on its asyncio loop). A request's text is decoded incrementally as UTF-8, with U+FFFD
for bytes that do not decode, as `blt-jax generate` prints it; while a stop string could still begin
in the last bytes, they are held back, so a streamed completion never shows text it then retracts.
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from blt_jax.inference.batching import BatchDecoder, RowSpec
from blt_jax.inference.vocabulary import Vocabulary

RATE_WINDOW = 10.0  # seconds over which bytes/s is measured
log = logging.getLogger("blt_jax.serve")


class QueueFull(Exception):
    """Every row is busy and the queue holds its most requests."""


class Unavailable(Exception):
    """The server takes no requests: it is shutting down, or its decoding loop has failed."""


@dataclasses.dataclass(eq=False)  # one request is equal only to itself
class Request:
    """One completion as the loop runs it.

    Attributes:
      spec: the prompt (token ids, BOS first) and its sampling.
      max_new: the most bytes to generate (EOS not counted in the text).
      stop: strings that end the completion (not included in it).
      emit: called from the loop's thread with (text, finish_reason or None) as text becomes final;
        a finish reason ("stop" or "length") comes exactly once, last.
    """

    spec: RowSpec
    max_new: int
    stop: tuple[str, ...]
    emit: Callable[[str, str | None], None]
    generated: int = 0  # bytes generated so far (EOS excluded)
    text: str = ""  # decoded so far
    sent: int = 0  # characters of `text` already emitted
    cancelled: bool = False
    finished: bool = False

    def __post_init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._raw = bytearray()  # the bytes generated (usage counts those before a stop string)

    def feed(self, tokens: np.ndarray, vocabulary: Vocabulary) -> str | None:
        """Takes the ids the row generated in a chunk; returns the finish reason once it is over.

        An id stands for one byte (a BLT) or several (a token LM): the budget counts bytes, so a token
        that crosses it is cut at the budget."""
        reason = None
        data = bytearray()
        for token in tokens:
            if int(token) == vocabulary.eos_id:
                reason = "stop"
                break
            piece = vocabulary.pieces[int(token)][: self.max_new - self.generated]
            data += piece
            self.generated += len(piece)
            if self.generated >= self.max_new:
                reason = "length"
                break
        self._raw += data
        self.text += self._decoder.decode(bytes(data), final=reason is not None)
        cut = min((i for i in (self.text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text, reason = self.text[:cut], "stop"
            # Usage counts the bytes of the text returned, not what the chunk ran past the stop string.
            at = [i for i in (self._raw.find(s.encode("utf-8")) for s in self.stop) if i >= 0]
            self.generated = min(at) if at else len(self.text.encode("utf-8"))
        hold = 0 if reason else max((len(s) - 1 for s in self.stop), default=0)
        final = max(self.sent, len(self.text) - hold)
        if final > self.sent or reason:
            self.emit(self.text[self.sent : final], reason)
            self.sent = final
        return reason


class Scheduler:
    """Owns the decode rows and the queue; `start` runs the loop in a daemon thread.

    Args:
      decoder: the rows.
      vocabulary: what the decoder's ids stand for.
      max_queue: requests that may wait for a row; beyond it `submit` raises QueueFull.
    """

    def __init__(self, decoder: BatchDecoder, vocabulary: Vocabulary, max_queue: int):
        self.decoder, self.vocabulary, self.max_queue = decoder, vocabulary, max_queue
        self.rows: list[Request | None] = [None] * decoder.rows
        self.queue: collections.deque[Request] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.counts = collections.Counter()  # requests by outcome, bytes generated
        self._recent: collections.deque[tuple[float, int]] = collections.deque()  # (time, bytes) per chunk

    # ---- the HTTP side ------------------------------------------------------------------------

    def submit_all(self, requests: list[Request]) -> None:
        """Queues every request or none (one HTTP request may hold several prompts)."""
        with self._cond:
            if self._stopping:
                raise Unavailable("the server is shutting down")
            if self.error is not None or self._thread is None or not self._thread.is_alive():
                raise Unavailable(f"the decoding loop is not running ({self.error!r})")
            free = sum(r is None for r in self.rows)
            if len(self.queue) + len(requests) > self.max_queue + free:  # the bound counts beyond the free rows
                self.counts["rejected"] += 1
                raise QueueFull(
                    f"all {len(self.rows)} rows are busy and {max(0, len(self.queue) - free)} requests are waiting"
                )
            self.queue.extend(requests)
            self.counts["received"] += len(requests)
            self._cond.notify()

    def cancel(self, request: Request) -> None:
        """The client went away: the request leaves its row (or the queue) before the next chunk."""
        with self._cond:
            if not request.finished:
                request.cancelled = True
                if request in self.queue:
                    self.queue.remove(request)
                    request.finished = True
                    self.counts["cancelled"] += 1
                self._cond.notify()

    def _trim_recent(self) -> None:
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - RATE_WINDOW:
            self._recent.popleft()

    def stats(self) -> dict:
        with self._cond:
            self._trim_recent()
            rate = sum(n for _, n in self._recent) / RATE_WINDOW
            return {
                "rows": len(self.rows),
                "rows_busy": sum(r is not None for r in self.rows),
                "queue_length": len(self.queue),
                "bytes_per_second": rate,
                **self.counts,
            }

    # ---- the loop -----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="blt-jax-decode", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stops after the running requests end (or are cancelled by their clients)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self.queue and all(r is None for r in self.rows) and not self._stopping:
                        self._cond.wait()
                    if self._stopping and all(r is None for r in self.rows):
                        for request in self.queue:
                            request.finished = True
                            request.emit("", "cancelled")
                            self.counts["cancelled"] += 1
                        self.queue.clear()
                        return
                    self._drop_cancelled()
                    taken = []
                    for row, current in enumerate(self.rows):
                        if current is None and self.queue:
                            self.rows[row] = self.queue.popleft()
                            taken.append(row)
                for row in taken:
                    try:
                        self.decoder.admit(row, self.rows[row].spec)
                    except Exception as error:
                        log.exception("admitting a request failed")
                        with self._cond:
                            request, self.rows[row] = self.rows[row], None
                            request.finished = True
                            self.counts["failed"] += 1
                        request.emit(f"{type(error).__name__}: {error}", "error")
                if all(r is None for r in self.rows):
                    continue
                tokens, generated = self.decoder.advance()
                produced = 0
                with self._cond:
                    for row, request in enumerate(self.rows):
                        if request is None or request.cancelled:
                            continue
                        before = request.generated
                        reason = request.feed(tokens[row][generated[row]], self.vocabulary)
                        produced += request.generated - before
                        if reason:
                            request.finished = True
                            self.counts[f"finished_{reason}"] += 1
                            self.rows[row] = None
                    self._drop_cancelled()
                    self.counts["bytes_generated"] += produced
                    self._recent.append((time.monotonic(), produced))
                    self._trim_recent()
                    self.decoder.refresh([row for row, r in enumerate(self.rows) if r is None])
        except BaseException as error:
            self.error = error
            with self._cond:
                for request in [*self.queue, *(r for r in self.rows if r is not None)]:
                    request.finished = True
                    request.emit("", "error")
                    self.counts["failed"] += 1
                self.queue.clear()
            raise

    def _drop_cancelled(self) -> None:
        for row, request in enumerate(self.rows):
            if request is not None and request.cancelled:
                request.finished = True
                self.rows[row] = None
                self.counts["cancelled"] += 1
