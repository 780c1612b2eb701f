"""A local HTTP file server (127.0.0.1) that misbehaves on request, for the failure tests.

Files are served from a folder with HEAD, GET and single byte ranges. A file's name picks its trouble:
- `flaky-*`: the first `flaky_failures` GETs for it answer 503 (a HEAD answers: a listing sees its size);
- `drop-*`: the first GET sends half the body and closes the connection;
- `stall-*`: every GET sends half the body, then stalls (for `stall_s`, or until the server stops).
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class TroubleServer:
    def __init__(self, folder: str, flaky_failures: int = 2, stall_s: float = 90.0):
        self.folder, self.flaky_failures, self.stall_s = folder, flaky_failures, stall_s
        self.requests: Counter = Counter()  # every request, per file name
        self.get_requests: Counter = Counter()  # every GET, per file name
        self.gets: Counter = Counter()  # GETs that reached the body, per file name
        self.sent: Counter = Counter()  # body bytes sent, per file name
        self.queries: list[str] = []  # each request's query string (a presigned URL's signature reaches the server)
        self.released = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                name = os.path.basename(self.path.split("?")[0])
                server.queries.append(self.path.partition("?")[2])
                path = os.path.join(server.folder, name)
                server.requests[name] += 1
                server.get_requests[name] += body
                if not os.path.isfile(path):
                    self.send_error(404)
                    return
                if name.startswith("flaky-") and body and server.get_requests[name] <= server.flaky_failures:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                size = os.path.getsize(path)
                start, stop = 0, size
                match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if match:
                    start = int(match[1])
                    stop = min(size, int(match[2]) + 1) if match[2] else size
                self.send_response(206 if match else 200)
                self.send_header("Content-Length", str(stop - start))
                self.send_header("Accept-Ranges", "bytes")
                if match:
                    self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
                self.end_headers()
                if not body:
                    return
                with open(path, "rb") as f:  # the range only: a large file is not read whole per request
                    f.seek(start)
                    part = f.read(stop - start)
                server.gets[name] += 1
                if name.startswith("stall-") or (name.startswith("drop-") and server.gets[name] == 1):
                    self.wfile.write(part[: len(part) // 2])
                    self.wfile.flush()
                    server.sent[name] += len(part) // 2
                    if name.startswith("stall-"):
                        server.released.wait(server.stall_s)
                    self.close_connection = True
                    return
                self.wfile.write(part)
                server.sent[name] += len(part)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()
