"""The OpenAI-compatible HTTP API of `blt-jax serve` (an ASGI app: starlette, run by uvicorn).

Endpoints:
  POST /v1/completions  OpenAI's completions: `prompt` (a string or a list of strings), `max_tokens`
                        (bytes), `temperature`, `top_p`, `top_k`, `stop`, `seed`, `stream`, `n` = 1.
                        Usage counts bytes: the prompt's UTF-8 bytes and the bytes generated, for
                        a BLT and a token LM alike.
  GET  /v1/models       the served model.
  GET  /health          200 once every program is compiled (503 before).
  GET  /metrics         Prometheus text: requests by outcome, rows busy, queue length, bytes/s.

A bad request gets HTTP 400 with OpenAI's error object ({"error": {"message", "type", "param",
"code"}}) and touches nothing else; a full queue gets 429.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import math
import time
import uuid
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from blt_jax.inference.batching import RowSpec
from blt_jax.serve.scheduler import QueueFull, Request, Scheduler, Unavailable

KNOWN_FIELDS = {
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "seed",
    "stream",
    "n",
    "stream_options",
    "user",
    "echo",
    "logprobs",
    "presence_penalty",
    "frequency_penalty",
    "best_of",
    "logit_bias",
    "suffix",
}
MAX_STOPS = 4  # as OpenAI
DISCONNECT_POLL = 0.5  # seconds between checks that a plain request's client is still there


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for.

    Attributes:
      max_prompt_bytes: the longest prompt, in UTF-8 bytes.
      max_tokens: the most bytes one completion may generate.
      strict: unknown fields are an error (else ignored, as most OpenAI-compatible servers do).
    """

    max_prompt_bytes: int
    max_tokens: int
    strict: bool = False


@dataclasses.dataclass(frozen=True)
class Completion:
    """A validated request: one or more prompts and how to continue each."""

    prompts: tuple[str, ...]
    max_tokens: int
    temperature: float
    top_p: float | None
    top_k: int | None
    stop: tuple[str, ...]
    seed: int
    stream: bool
    include_usage: bool


def _number(body: dict, name: str, default, kind, low=None, high=None, low_open=False):
    value = body.get(name, default)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not float(value).is_integer())
    ):
        raise BadRequest(f"'{name}' must be {'an integer' if kind is int else 'a number'}, got {value!r}", name)
    value = kind(value)
    if not math.isfinite(value):
        raise BadRequest(f"'{name}' must be finite, got {value}", name)
    if low is not None and (value <= low if low_open else value < low):
        raise BadRequest(f"'{name}' must be {'>' if low_open else '>='} {low}, got {value}", name)
    if high is not None and value > high:
        raise BadRequest(f"'{name}' must be <= {high}, got {value}", name)
    return value


def parse_completion(body: Any, limits: Limits, vocab_size: int) -> Completion:
    """The request body as a Completion, or BadRequest naming the first thing wrong (`vocab_size`: the
    model's ids, the most a top_k can keep)."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if limits.strict:
        unknown = sorted(set(body) - KNOWN_FIELDS)
        if unknown:
            raise BadRequest(f"unknown field{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}", unknown[0])
    prompt = body.get("prompt")
    if prompt is None:
        raise BadRequest("'prompt' is required", "prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("'prompt' must be a string or a non-empty list of strings", "prompt")
    for p in prompts:
        size = len(p.encode("utf-8"))
        if size > limits.max_prompt_bytes:
            raise BadRequest(
                f"the prompt is {size} bytes; this server takes at most {limits.max_prompt_bytes} (--max-prompt-bytes)",
                "prompt",
            )
    if _number(body, "n", 1, int) != 1:
        raise BadRequest("only n = 1 is supported", "n")
    for name in ("echo", "best_of", "logprobs", "suffix", "logit_bias"):
        if body.get(name) not in (None, False, {}, 1 if name == "best_of" else None):  # {}: clients' default bias
            raise BadRequest(f"'{name}' is not supported", name)
    max_tokens = _number(body, "max_tokens", min(16, limits.max_tokens), int, 1, limits.max_tokens)  # 16: OpenAI
    temperature = _number(body, "temperature", 1.0, float, 0.0, 2.0)
    top_p = _number(body, "top_p", None, float, 0.0, 1.0, low_open=True)
    top_k = _number(body, "top_k", None, int, 0)
    top_k = None if top_k is None else min(top_k, vocab_size)  # more than the vocabulary: all of it
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise BadRequest(f"'stop' must be a non-empty string or a list of at most {MAX_STOPS} of them", "stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest(f"'seed' must be an integer, got {seed!r}", "seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", "stream")
    options = body.get("stream_options") or {}
    if temperature == 0:  # greedy: the sampling knobs do not apply
        top_p, top_k = None, None
    return Completion(
        tuple(prompts),
        max_tokens,
        temperature,
        None if top_p == 1.0 else top_p,
        top_k or None,
        tuple(stops),
        int(np.random.randint(0, 2**31 - 1)) if seed is None else seed % 2**31,
        stream,
        bool(isinstance(options, dict) and options.get("include_usage")),
    )


def _emit(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, text: str, reason: str | None) -> None:
    """Hands an event from the decoding thread to the request's handler on the event loop."""
    try:
        loop.call_soon_threadsafe(queue.put_nowait, (text, reason))
    except RuntimeError:  # the loop has closed (the server is exiting): nobody is waiting
        pass


def _error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status_code=status)


class Server:
    """The app's state: the scheduler, the model's name, the limits, readiness."""

    def __init__(self, scheduler: Scheduler, model_name: str, limits: Limits):
        self.scheduler, self.model_name, self.limits = scheduler, model_name, limits
        self.ready = False
        self.created = int(time.time())

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/health", self.health, methods=["GET"]),
                Route("/metrics", self.metrics, methods=["GET"]),
            ]
        )

    async def health(self, request: HttpRequest) -> Response:
        if self.scheduler.error is not None:
            return JSONResponse({"status": "error", "error": repr(self.scheduler.error)}, status_code=500)
        if not self.ready:
            return JSONResponse({"status": "compiling"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def models(self, request: HttpRequest) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": self.model_name, "object": "model", "created": self.created, "owned_by": "blt-jax"}],
            }
        )

    async def metrics(self, request: HttpRequest) -> Response:
        stats = self.scheduler.stats()
        lines = []
        for outcome in ("received", "finished_stop", "finished_length", "cancelled", "rejected", "failed"):
            lines.append(f'blt_jax_requests_total{{outcome="{outcome}"}} {stats.get(outcome, 0)}')
        lines += [
            f"blt_jax_rows {stats['rows']}",
            f"blt_jax_rows_busy {stats['rows_busy']}",
            f"blt_jax_queue_length {stats['queue_length']}",
            f"blt_jax_bytes_generated_total {stats.get('bytes_generated', 0)}",
            f"blt_jax_bytes_per_second {stats['bytes_per_second']:.3f}",
        ]
        return PlainTextResponse("\n".join(lines) + "\n")

    async def completions(self, request: HttpRequest) -> Response:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the request body is not valid JSON", "invalid_request_error")
        try:
            completion = parse_completion(body, self.limits, self.scheduler.vocabulary.size)
        except BadRequest as error:
            return _error(400, str(error), "invalid_request_error", error.param)
        if self.scheduler.error is not None:
            return _error(503, f"the server cannot decode: {self.scheduler.error!r}", "server_error")
        if not self.ready:
            return _error(503, "the server is still compiling its programs", "server_error")
        prompts = [self.scheduler.vocabulary.encode(prompt) for prompt in completion.prompts]
        if any(len(ids) == 0 for ids in prompts):  # a model without BOS given an empty prompt
            return _error(
                400, "the prompt is empty and this model has no BOS to start from", "invalid_request_error", "prompt"
            )
        loop = asyncio.get_running_loop()
        events: list[asyncio.Queue] = []
        requests = []
        for index, ids in enumerate(prompts):
            queue: asyncio.Queue = asyncio.Queue()
            emit = functools.partial(_emit, loop, queue)
            spec = RowSpec(
                ids, completion.temperature, completion.top_k, completion.top_p, (completion.seed + index) % 2**31
            )
            requests.append(Request(spec, completion.max_tokens, completion.stop, emit))
            events.append(queue)
        try:
            self.scheduler.submit_all(requests)
        except QueueFull as error:
            return _error(429, f"the server is busy: {error}; retry later", "rate_limit_exceeded")
        except Unavailable as error:
            return _error(503, str(error), "server_error")
        ident = f"cmpl-{uuid.uuid4().hex[:24]}"
        prompt_bytes = [len(p.encode("utf-8")) for p in completion.prompts]
        if completion.stream:
            return StreamingResponse(
                self._stream(ident, completion, requests, events, prompt_bytes),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        collect = asyncio.ensure_future(asyncio.gather(*(self._collect(queue) for queue in events)))
        try:
            # A plain request's handler is not cancelled when its client goes away: ask, and free the rows.
            while not collect.done():
                await asyncio.wait({collect}, timeout=DISCONNECT_POLL)
                if not collect.done() and await request.is_disconnected():
                    collect.cancel()
                    for req in requests:
                        self.scheduler.cancel(req)
                    return Response(status_code=499)
            texts, reasons = zip(*collect.result())
        except asyncio.CancelledError:
            collect.cancel()
            for req in requests:
                self.scheduler.cancel(req)
            raise
        failed = [text for text, reason in zip(texts, reasons) if reason in ("error", "cancelled")]
        if failed:
            return _error(
                500,
                f"the completion failed: {failed[0]}"
                if failed[0]
                else "the server stopped before the completion ended",
                "server_error",
            )
        generated = sum(r.generated for r in requests)
        return JSONResponse(
            {
                "id": ident,
                "object": "text_completion",
                "created": int(time.time()),
                "model": self.model_name,
                "choices": [
                    {"text": t, "index": i, "logprobs": None, "finish_reason": r}
                    for i, (t, r) in enumerate(zip(texts, reasons))
                ],
                "usage": {
                    "prompt_tokens": sum(prompt_bytes),
                    "completion_tokens": generated,
                    "total_tokens": sum(prompt_bytes) + generated,
                },
            }
        )

    @staticmethod
    async def _collect(queue: asyncio.Queue) -> tuple[str, str]:
        parts = []
        while True:
            text, reason = await queue.get()
            parts.append(text)
            if reason is not None:
                return "".join(parts), reason

    async def _stream(self, ident, completion: Completion, requests, events, prompt_bytes):
        created = int(time.time())

        def chunk(index, text, reason):
            return (
                "data: "
                + json.dumps(
                    {
                        "id": ident,
                        "object": "text_completion",
                        "created": created,
                        "model": self.model_name,
                        "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": reason}],
                    },
                    ensure_ascii=False,
                )
                + "\n\n"
            )

        try:
            for index, queue in enumerate(events):  # prompts of a list stream one after another
                while True:
                    text, reason = await queue.get()
                    if reason in ("error", "cancelled"):
                        message = (
                            f"the completion failed: {text}"
                            if text
                            else "the server stopped before the completion ended"
                        )
                        yield (
                            "data: "
                            + json.dumps(
                                {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
                            )
                            + "\n\n"
                        )
                        return
                    if text or reason:
                        yield chunk(index, text, reason)
                    if reason is not None:
                        break
            if completion.include_usage:
                generated = sum(r.generated for r in requests)
                yield (
                    "data: "
                    + json.dumps(
                        {
                            "id": ident,
                            "object": "text_completion",
                            "created": created,
                            "model": self.model_name,
                            "choices": [],
                            "usage": {
                                "prompt_tokens": sum(prompt_bytes),
                                "completion_tokens": generated,
                                "total_tokens": sum(prompt_bytes) + generated,
                            },
                        }
                    )
                    + "\n\n"
                )
            yield "data: [DONE]\n\n"
        finally:  # the client went away (or the stream ended): free the rows
            for req in requests:
                self.scheduler.cancel(req)
