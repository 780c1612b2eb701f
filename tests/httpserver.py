"""A local HTTP file server (127.0.0.1) that misbehaves on request, for the failure tests.

Files are served from a folder with HEAD, GET and single byte ranges, each with an ETag (of the file's size and
modification time) that `If-Match` is checked against (412). A file's name picks its trouble:
- `flaky-*`: the first `flaky_failures` GETs for it answer 503 (a HEAD answers: a listing sees its size; with
  `flaky_heads`, its first `flaky_failures` HEADs answer 503 too);
- `drop-*`: the first GET sends half the body and closes the connection;
- `cut-*`: the first `cut_failures` GETs send `cut_at` of their body and close the connection;
- `stall-*`: every GET (the first `stall_failures`, if set) sends half the body, then stalls (for `stall_s`, or
  until the server stops).
`ranges[name]`: the first byte each GET asked for (0 without a Range header).
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CUT_HOLD_S = 1.0  # how long a cut body's connection stays open before it closes


class TroubleServer:
    def __init__(self, folder: str, flaky_failures: int = 2, stall_s: float = 90.0, flaky_heads: bool = False,
                 cut_failures: int = 2, cut_at: float = 0.4, stall_failures: int | None = None):
        self.folder, self.flaky_failures, self.stall_s = folder, flaky_failures, stall_s
        self.flaky_heads, self.cut_failures, self.cut_at = flaky_heads, cut_failures, cut_at
        self.stall_failures = stall_failures
        self.ranges: dict[str, list[int]] = {}
        self.on_get = lambda name, count: None  # called before each GET's body is read (a test may replace the file)
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
                heads = server.requests[name] - server.get_requests[name]
                if name.startswith("flaky-") and (server.get_requests[name] if body else heads * server.flaky_heads
                                                  ) in range(1, server.flaky_failures + 1):
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if body:
                    server.on_get(name, server.get_requests[name])
                status = os.stat(path)
                size, etag = status.st_size, f'"{status.st_size:x}-{status.st_mtime_ns:x}"'
                if self.headers.get("If-Match") not in (None, etag):
                    self.send_response(412)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, stop = 0, size
                match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if match:
                    start = int(match[1])
                    stop = min(size, int(match[2]) + 1) if match[2] else size
                if body:
                    server.ranges.setdefault(name, []).append(start)
                self.send_response(206 if match else 200)
                self.send_header("Content-Length", str(stop - start))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", etag)
                if match:
                    self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
                self.end_headers()
                if not body:
                    return
                with open(path, "rb") as f:  # the range only: a large file is not read whole per request
                    f.seek(start)
                    part = f.read(stop - start)
                server.gets[name] += 1
                stalls = name.startswith("stall-") and server.gets[name] <= (server.stall_failures or server.gets[name])
                cut = 0.5 if stalls or (name.startswith("drop-") and server.gets[name] == 1) else (
                    server.cut_at if name.startswith("cut-") and server.gets[name] <= server.cut_failures else None)
                if cut is not None:
                    self.wfile.write(part[: int(len(part) * cut)])
                    self.wfile.flush()
                    server.sent[name] += int(len(part) * cut)
                    # A cut is held open a moment: aiohttp raises a close it has seen before the bytes it holds,
                    # so a reader slow to read (a loaded CI machine) would lose the part sent and resume at 0.
                    server.released.wait(server.stall_s if stalls else CUT_HOLD_S)
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
