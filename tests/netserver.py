"""A real local HTTP server for the network tool tests (no mocks): routes for
slow answers, resets, status sequences with Retry-After, redirects, big
bodies and a gzip bomb. It counts the requests each path got."""

from __future__ import annotations

import gzip
import http.server
import socket
import struct
import threading
import time
from collections import Counter
from urllib.parse import parse_qs, urlsplit


class NetServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: Counter[str] = Counter()
        self.sequences: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.down = False  # /flaky answers 503 while set
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def __enter__(self) -> NetServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def next_of(self, name: str) -> tuple[int, dict[str, str]]:
        with self._lock:
            seq = self.sequences.get(name) or [(200, {})]
            return seq.pop(0) if len(seq) > 1 else seq[0]


_HTML = (
    b"<html><head><title>Doc</title><script>var hidden = 1;</script></head><body>"
    b"<h1>Heading</h1><p>Some <b>bold</b> text and a <a href='/next'>link</a>.</p>"
    b"<ul><li>one</li><li>two</li></ul></body></html>"
)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: NetServer

    def log_message(self, *args: object) -> None:
        pass

    def _send(
        self,
        status: int,
        body: bytes,
        ctype: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: C901 - one branch per route reads best here
        parts = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        with self.server._lock:
            self.server.hits[path] += 1
        if path == "/ok":
            self._send(200, b"hello from the test server\n")
        elif path == "/html":
            self._send(200, _HTML, "text/html; charset=utf-8")
        elif path == "/json":
            self._send(200, b'{"a": 1}', "application/json")
        elif path == "/slow":
            time.sleep(float(q.get("s", "2")))
            self._send(200, b"late")
        elif path == "/reset":
            # RST instead of an answer: SO_LINGER with a zero timeout.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
        elif path.startswith("/seq/"):
            status, headers = self.server.next_of(path[5:])
            self._send(status, f"status {status}".encode(), headers=headers)
        elif path == "/flaky":
            if self.server.down:
                self._send(503, b"down")
            else:
                self._send(200, b"up again")
        elif path == "/redirect":
            self._send(int(q.get("code", "302")), b"", headers={"Location": q["to"]})
        elif path == "/loop":
            self._send(302, b"", headers={"Location": "/loop"})
        elif path == "/big":
            self._send(200, b"x" * int(q.get("n", "100000")))
        elif path == "/bomb":
            body = gzip.compress(b"\0" * int(q.get("n", str(64 * 1024 * 1024))), 9)
            self._send(200, body, headers={"Content-Encoding": "gzip"})
        elif path == "/gzip":
            body = gzip.compress(b"compressed text " * 100)
            self._send(200, body, headers={"Content-Encoding": "gzip"})
        elif path == "/search":
            self._searx(q)
        elif path == "/brave":
            import json

            if self.headers.get("X-Subscription-Token") != "brave-test-key-123":
                self._send(401, b'{"error": "bad token"}', "application/json")
                return
            results = [
                {
                    "title": "Brave one",
                    "url": "https://brave.example/1",
                    "description": f"about {q.get('q', '')}",
                }
            ]
            self._send(200, json.dumps({"web": {"results": results}}).encode(), "application/json")
        elif path == "/headers":
            self._send(200, "\n".join(f"{k}: {v}" for k, v in self.headers.items()).encode())
        else:
            self._send(404, b"no such route")

    def _searx(self, q: dict[str, str]) -> None:
        import json

        if q.get("format") != "json":
            self._send(403, b"format not allowed")
            return
        term = q.get("q", "")
        results = [
            {
                "title": f"{term} result {i}",
                "url": f"https://example.org/{i}",
                "content": f"snippet {i} about {term}",
                "engine": "test",
            }
            for i in range(1, 4)
        ]
        self._send(
            200, json.dumps({"query": term, "results": results}).encode(), "application/json"
        )
