"""A real local S3 server (moto in server mode, on 127.0.0.1) behind a proxy that fails requests with 503.

The S3 clients' own retries are turned off (`total_max_attempts: 1`), so what survives the 503s is the
pipeline's own retrying. `fail_first[prefix] = n`: the first n requests for each key under that prefix
answer 503 ServiceUnavailable; a prefix that starts with a method ("PUT /bucket/_run/") fails only that method.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_UNAVAILABLE = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ServiceUnavailable</Code>"
                b"<Message>injected by the test</Message></Error>")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FlakyS3:
    def __init__(self):
        from moto.server import ThreadedMotoServer

        self.moto_port = _free_port()
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.moto_port, verbose=False)
        self.fail_first: dict[str, int] = {}  # "/bucket/prefix" -> failures per key
        self.requests: Counter = Counter()
        self.failed: Counter = Counter()
        self.lock = threading.Lock()
        server = self

        class Proxy(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes | None:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        chunk = self.rfile.read(size)
                        self.rfile.readline()  # the CRLF after each chunk
                        if not size:
                            break
                        chunks.append(chunk)
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else None

            def _forward(self):
                body = self._body()
                path = self.path.split("?")[0]
                with server.lock:
                    server.requests[(self.command, path)] += 1
                    count = server.requests[(self.command, path)]
                    fail = any(f"{self.command} {path}".startswith(p) if " " in p else path.startswith(p)
                               for p, n in server.fail_first.items() if count <= n)
                    if fail:
                        server.failed[path] += 1
                if fail:
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_UNAVAILABLE)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(_UNAVAILABLE)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", server.moto_port, timeout=60)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection", "transfer-encoding", "content-length")}
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                # a HEAD's length is the object's, as the server said; otherwise the body's
                self.send_header("Content-Length", response.getheader("Content-Length", "0") if self.command == "HEAD"
                                 else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.proxy = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
        self.proxy.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.proxy.server_address[1]}"
        self._thread = threading.Thread(target=self.proxy.serve_forever, daemon=True)

    def client_options(self) -> dict:
        """s3fs options: this endpoint, test credentials, no retries of the client's own."""
        return {"endpoint_url": self.endpoint, "key": "test", "secret": "test",
                "client_kwargs": {"region_name": "eu-west-1"},
                "config_kwargs": {"retries": {"total_max_attempts": 1, "mode": "standard"}}}

    def env(self) -> dict:
        """Environment for processes (Ray workers, a CLI) that reach this S3: fsspec reads FSSPEC_S3."""
        return {"FSSPEC_S3": json.dumps(self.client_options()), "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "eu-west-1"}

    def __enter__(self):
        self.moto.start()
        # moto keeps its buckets in the process: start each server empty
        http.client.HTTPConnection("127.0.0.1", self.moto_port).request("POST", "/moto-api/reset")
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.proxy.shutdown()
        self.proxy.server_close()
        self.moto.stop()
