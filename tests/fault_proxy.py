"""A fault-injecting HTTP proxy for tests, in front of fake-gcs-server: what Cloud Storage does under
load (429, 500, 503), connections reset in the middle of an answer, slow answers, and a bucket that
stays down. Faults are deterministic (every Nth request), counted by kind, and can be switched while
the clients run.

The proxy speaks HTTP/1.1 with keep-alive, forwards each request to the server whole (request bodies
with a length or chunked) and returns the server's answer with a length. Only the test side uses it:
the clients under test get its URL instead of the server's (`env`).
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import http.server
import socket
import socketserver
import struct
import threading
import time
import urllib.parse

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
}


@dataclasses.dataclass
class Faults:
    """Which requests fail, and how (0 = never). Requests are numbered from 1 as they arrive.

    Attributes:
      status_every: every Nth request is answered with the next status of `statuses`, not forwarded.
      statuses: the statuses those answers cycle through.
      reset_every: every Nth request's connection is reset: a read (GET) is forwarded and its answer
        cut after half its body; a write is dropped before it reaches the server. (A write whose
        answer is lost after the server did it is not injected: retrying the last request of a
        finished resumable upload returns the object on Cloud Storage but 404 on fake-gcs-server.)
      slow_every / slow_seconds: every Nth request waits this long before it is forwarded.
      down: every request is answered 503 (a bucket that stays down).
      hang_on: requests whose (decoded) path or body contains this string are held until `release`,
        then dropped unanswered (None: none).
    """

    status_every: int = 0
    statuses: tuple[int, ...] = (429, 503, 500)
    reset_every: int = 0
    slow_every: int = 0
    slow_seconds: float = 0.0
    down: bool = False
    hang_on: str | None = None


class FaultProxy:
    """The proxy on a free port of 127.0.0.1.

    Attributes:
      url: its base URL.
      faults: what it injects now (assign a new `Faults` to change it).
      injected: counts of injected faults by kind ("429", "503", "500", "reset", "slow", "down").
      requests: requests received.
      held: set once a request matched `hang_on` (the test may act, e.g. kill a client).
    """

    def __init__(self, upstream: str, faults: Faults | None = None):
        target = urllib.parse.urlparse(upstream)
        self._host, self._port = target.hostname, target.port
        self.faults = faults or Faults()
        self.injected: collections.Counter = collections.Counter()
        self.requests = 0
        self.held = threading.Event()
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    def env(self, server_env: dict[str, str], server_url: str) -> dict[str, str]:
        """A client environment (`gcs_server.GcsServer.client_env`) pointed at the proxy."""
        return {k: v.replace(server_url, self.url) for k, v in server_env.items()}

    def release(self) -> None:
        """Ends the held requests (their connections are reset; nothing reaches the server)."""
        self._release.set()

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def _number(self) -> int:
        with self._lock:
            self.requests += 1
            return self.requests

    def _count(self, kind: str) -> None:
        with self._lock:
            self.injected[kind] += 1

    def _forward(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, list, bytes]:
        connection = http.client.HTTPConnection(self._host, self._port, timeout=120)
        try:
            connection.request(method, path, body=body, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            return answer.status, [(k, v) for k, v in answer.getheaders() if k.lower() not in HOP_BY_HOP], data
        finally:
            connection.close()


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:
        pass  # clients that give up on a connection (what the faults cause) are not news


def _read_body(handler: http.server.BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def _handler(proxy: FaultProxy):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _head(self, status: int, headers: list, length: int) -> None:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(length))
            self.end_headers()

        def _answer(self, status: int, headers: list, body: bytes) -> None:
            self._head(status, headers, len(body))
            if self.command != "HEAD":
                self.wfile.write(body)

        def _reset(self, status: int, headers: list, body: bytes) -> None:
            """Half the answer, then a TCP reset."""
            self._head(status, headers, len(body))
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self._drop()

        def _drop(self) -> None:
            """A TCP reset with no answer."""
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

        def _handle(self) -> None:
            number = proxy._number()
            body = _read_body(self)
            faults = proxy.faults
            if faults.down:
                proxy._count("down")
                return self._answer(
                    503,
                    [("Content-Type", "application/json")],
                    b'{"error": {"code": 503, "message": "injected: the bucket is down"}}',
                )
            if faults.status_every and number % faults.status_every == 0:
                status = faults.statuses[(number // faults.status_every) % len(faults.statuses)]
                proxy._count(str(status))
                message = f'{{"error": {{"code": {status}, "message": "injected {status}"}}}}'.encode()
                return self._answer(status, [("Content-Type", "application/json")], message)
            if faults.hang_on and (
                faults.hang_on in urllib.parse.unquote(self.path) or faults.hang_on.encode() in body
            ):
                proxy.held.set()
                proxy._release.wait()
                return self._drop()  # never forwarded: the client that sent it is gone by now
            if faults.slow_every and number % faults.slow_every == 0:
                proxy._count("slow")
                time.sleep(faults.slow_seconds)
            reset = bool(faults.reset_every) and number % faults.reset_every == 0
            if reset and self.command not in ("GET", "HEAD"):
                proxy._count("reset")
                return self._drop()
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            status, answer_headers, data = proxy._forward(self.command, self.path, headers, body)
            if reset and data:
                proxy._count("reset")
                return self._reset(status, answer_headers, data)
            self._answer(status, answer_headers, data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

    return Handler
