"""Starting the server: the model, its decode rows, the compiled programs, uvicorn."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading

from blt_jax.errors import InputError
from blt_jax.inference.generate import capacity_for
from blt_jax.serve.app import Limits, Server
from blt_jax.serve.scheduler import Scheduler

log = logging.getLogger("blt_jax.serve")


class _Http:
    """uvicorn's server with our own signal handling: SIGTERM (or a first Ctrl-C) stops taking
    connections and lets the running completions end within the grace period, a second Ctrl-C stops at
    once; either way `run` returns and the process exits 0 (uvicorn itself re-raises the signal after
    its shutdown, which would end the process with 143)."""

    def __init__(self, config):
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):
                yield

        self.server = Server(config)

    def on_signal(self, signum, frame) -> None:
        if self.server.should_exit and signum == signal.SIGINT:
            self.server.force_exit = True
        self.server.should_exit = True

    def run(self) -> None:
        self.server.run()


def run(
    checkpoint: str,
    entropy_checkpoint: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_rows: int = 8,
    max_prompt_bytes: int = 2048,
    max_tokens: int = 1024,
    max_queue: int = 64,
    strict: bool = False,
    name: str | None = None,
    grace_seconds: float = 30.0,
) -> int:
    """Serves `checkpoint` until SIGTERM / Ctrl-C; returns the exit code.

    Args:
      checkpoint: a model directory (ours, HF or Meta) or a training workdir: a BLT, a token LM with its
        tokenizer (a Llama-family Hugging Face directory, a BPE run of ours) or a byte LM.
      entropy_checkpoint: the entropy LM of a workdir whose patching is by entropy.
      host, port: where to listen.
      max_rows: decode rows (requests generating at once).
      max_prompt_bytes: the longest prompt taken (UTF-8 bytes).
      max_tokens: the most bytes one request may generate.
      max_queue: requests that may wait for a row (beyond: HTTP 429).
      strict: unknown request fields are errors.
      name: the model's name in the API (default: the checkpoint's last path component).
      grace_seconds: after SIGTERM, how long running completions may take to end.
    """
    import uvicorn

    from blt_jax.api import from_pretrained

    for flag, value, low in (
        ("--max-rows", max_rows, 1),
        ("--max-prompt-bytes", max_prompt_bytes, 1),
        ("--max-tokens", max_tokens, 1),
        ("--max-queue", max_queue, 0),
    ):
        if value < low:
            raise InputError(f"{flag} must be >= {low}, got {value}")
    model = from_pretrained(checkpoint, entropy_path=entropy_checkpoint)
    # Token ids per prompt: at most one per byte, + BOS. A token LM's rows have room for max_tokens ids
    # too, though its completions reach max_tokens bytes in fewer.
    capacity = capacity_for(max_prompt_bytes + 1, max_tokens)
    decoding = model.decoding(capacity)
    decoder = decoding.rows(max_rows)
    scheduler = Scheduler(decoder, decoding.vocabulary, max_queue)
    label = name or os.path.basename(os.path.normpath(checkpoint.rstrip("/"))) or checkpoint
    server = Server(scheduler, label, Limits(max_prompt_bytes, max_tokens, strict))

    def warm_up():
        try:
            decoder.warm_up(max_prompt_bytes + 1)
        except BaseException as error:
            scheduler.error = error
            log.exception("compiling the decoding programs failed")
            return
        scheduler.start()
        server.ready = True
        print(
            f"blt-jax serve: ready: {label} on http://{host}:{port} ({max_rows} rows of {capacity} positions)",
            file=sys.stderr,
            flush=True,
        )

    threading.Thread(target=warm_up, name="blt-jax-compile", daemon=True).start()
    print(
        f"blt-jax serve: compiling {label}'s programs; /health answers 503 until they are ready",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(
        server.app(), host=host, port=port, log_level="warning", timeout_graceful_shutdown=grace_seconds, lifespan="off"
    )
    http = _Http(config)
    previous = {sig: signal.signal(sig, http.on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        http.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    scheduler.stop(timeout=grace_seconds)
    print("blt-jax serve: stopped", file=sys.stderr, flush=True)
    return 0
