"""What blt_jax does when Cloud Storage fails: how long every client retries, in one place, and one
line naming the object when the retries run out.

Cloud Storage answers 429 and 5xx under load and drops connections; each client retries on its own
schedule (gcsfs about 30 s, google-cloud-storage 120 s, tensorstore up to 32 tries of up to 32 s).
blt_jax gives them one budget, `BLT_JAX_STORAGE_RETRY_SECONDS` (default 600: a pod run outlives a
few minutes of outage):
  * reads and writes of whole objects through `blt_jax.paths` (configs, metrics, TensorBoard
    events, stored entropies' manifests, exports) are retried here, with exponential backoff up to
    32 s, until the budget is spent; gcsfs's own retries run inside each attempt;
  * tensorstore, which writes and reads checkpoint arrays, gets as many tries as fit the budget
    (`tensorstore_retries`, applied by `blt_jax.checkpoint`).
When the budget is spent, `StorageError` names the object and the last answer; the CLI prints it as
one line and exits non-zero. Errors that retrying cannot fix (no such bucket, no permission) are
not retried.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import TypeVar

from blt_jax.errors import UserError

ENV = "BLT_JAX_STORAGE_RETRY_SECONDS"
DEFAULT_SECONDS = 600.0
MAX_DELAY = 32.0  # seconds between two tries, at most (as gcsfs and tensorstore)
TRANSIENT_CODES = {408, 429, 500, 502, 503, 504}
T = TypeVar("T")


class StorageError(UserError):
    """Cloud Storage kept failing for longer than the retry budget."""


def retry_seconds() -> float:
    """The retry budget in seconds (`BLT_JAX_STORAGE_RETRY_SECONDS`)."""
    raw = os.environ.get(ENV)
    if raw is None:
        return DEFAULT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"{ENV}={raw!r}: expected a number of seconds") from None
    if not value >= 0:
        raise UserError(f"{ENV}={raw!r}: expected a number of seconds >= 0")
    return value


def tries_within(seconds: float) -> int:
    """How many tries an exponential backoff (1 s, 2 s, ... up to MAX_DELAY between tries) makes
    within `seconds`: at least 1."""
    tries, waited, delay = 1, 0.0, 1.0
    while waited + delay <= seconds:
        waited += delay
        tries += 1
        delay = min(2 * delay, MAX_DELAY)
    return tries


def tensorstore_retries() -> dict:
    """tensorstore's `gcs_request_retries` context resource for the budget."""
    return {"max_retries": tries_within(retry_seconds()), "initial_delay": "1s", "max_delay": f"{MAX_DELAY:g}s"}


def status_of(error: BaseException) -> int | None:
    """The HTTP status an error of a storage client carries, if any."""
    for name in ("code", "status", "status_code"):
        value = getattr(error, name, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    return None


def is_transient(error: BaseException) -> bool:
    """Whether retrying may help: a 408/429/5xx answer, or a connection that failed or broke."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, UserError)):
        return False
    status = status_of(error)
    if status is not None:
        return status in TRANSIENT_CODES
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    module = type(error).__module__ or ""
    # aiohttp's and requests' connection errors (what gcsfs raises when a connection breaks).
    return module.startswith(("aiohttp", "requests", "urllib3"))


def describe(error: BaseException) -> str:
    """A short account of a storage error: its status and first line."""
    status = status_of(error)
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"HTTP {status}: {text}" if status is not None and str(status) not in text else text


def retrying(what: str, call: Callable[[], T], budget: float | None = None) -> T:
    """`call()`, tried again after transient failures until `budget` seconds (default
    `retry_seconds()`) have passed; then StorageError naming `what` (an object or directory)."""
    budget = retry_seconds() if budget is None else budget
    start = time.monotonic()
    delay, tries = 1.0, 0
    while True:
        tries += 1
        try:
            return call()
        except Exception as error:
            if not is_transient(error):
                raise
            spent = time.monotonic() - start
            if spent + delay > budget:
                raise StorageError(
                    f"{what}: Cloud Storage still failing after {tries} tries over {spent:.0f} s "
                    f"({ENV}={budget:g}): {describe(error)}"
                ) from error
            time.sleep(delay * (0.5 + random.random() / 2))
            delay = min(2 * delay, MAX_DELAY)
