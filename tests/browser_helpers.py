"""Local HTTP servers and process checks for the browser tests."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

Page = Callable[["Site", http.server.BaseHTTPRequestHandler], tuple[int, dict[str, str], bytes]]


@dataclass
class Site:
    """A threaded HTTP server on `host`; `pages` maps a path to a handler,
    `hits` lists every path requested (to prove a request never arrived)."""

    host: str
    pages: dict[str, Page]
    hits: list[str] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


def html(body: str, *, headers: dict[str, str] | None = None) -> Page:
    def page(
        site: Site, req: http.server.BaseHTTPRequestHandler
    ) -> tuple[int, dict[str, str], bytes]:
        return (
            200,
            {"Content-Type": "text/html; charset=utf-8", **(headers or {})},
            body.replace("{base}", site.url("")).encode(),
        )

    return page


@contextmanager
def serve(host: str, pages: dict[str, Page]) -> Iterator[Site]:
    site = Site(host, pages)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            site.hits.append(self.path)
            page = site.pages.get(self.path.split("?")[0])
            status, headers, body = (
                page(site, self) if page else (404, {"Content-Type": "text/plain"}, b"not found")
            )
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    site.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
