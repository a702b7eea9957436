"""fetch: the web_fetch tool against a bare httpx GET of the same local page.

Both sides open a new client per call (the tool does, so a bare GET that
reused one connection would measure keep-alive, not the tool). The tool's
side adds what a worker does: the URL and address egress checks, resolving
and connecting to the checked address, the capped streaming read, text
decoding, and a circuit breaker (the state folder's SQLite storage, and on
Redis when it is up). Rounds interleave the contenders. The HTML row adds
the Markdown conversion, which is the tool's work, not overhead: reported,
not part of the target.
"""

from __future__ import annotations

import http.server
import threading
from typing import Any

from bench.common import (
    REDIS_BROKER,
    Options,
    Result,
    now,
    pct,
    ratio,
    redis_available,
    rounds,
    scratch_dir,
    show,
    x,
)

BODY = b"plain text line for the benchmark\n" * 600  # about 20 KB
HTML = (
    b"<html><head><title>Bench</title></head><body>"
    + b"<h2>Section</h2><p>Some <b>bold</b> text and a <a href='/x'>link</a>.</p>" * 120
    + b"</body></html>"
)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body, ctype = (
            (HTML, "text/html; charset=utf-8")
            if self.path == "/html"
            else (BODY, "text/plain; charset=utf-8")
        )
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def run(opts: Options) -> Result:
    import httpx

    from orchestrator.guard.policy import Network
    from orchestrator.tools.web.breaker import Breakers, SqliteStorage
    from orchestrator.tools.web.fetch import FetchLimits, fetch

    res = Result("fetch")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    net = Network(enabled=True, allow_private=("127.0.0.1",))
    limits = FetchLimits()
    n_rounds = 150 if opts.quick else 600
    try:
        with scratch_dir("fetch") as tmp:
            folder = Breakers(lambda h: SqliteStorage(tmp / "breakers.sqlite", h))
            shared_tls = httpx.create_ssl_context()
            contenders: dict[str, Any] = {
                # The strictest peer: httpx.get with one shared TLS context (a plain
                # httpx.get loads the CA bundle on every call, tens of ms).
                "bare httpx.get": lambda url: httpx.get(url, verify=shared_tls).raise_for_status(),
                "bare httpx.get, new TLS context": lambda url: httpx.get(url).raise_for_status(),
                "web_fetch (no breaker)": lambda url: fetch(
                    url, net, limits=limits, secrets=(), convert=False
                ),
                "web_fetch + state-folder breaker": lambda url: fetch(
                    url, net, limits=limits, secrets=(), breakers=folder, convert=False
                ),
            }
            if redis_available(REDIS_BROKER):
                import pybreaker
                import redis

                client = redis.Redis.from_url(REDIS_BROKER)
                on_redis = Breakers(
                    lambda h: pybreaker.CircuitRedisStorage(
                        pybreaker.STATE_CLOSED, client, namespace=f"bench:breaker:{h}"
                    )
                )
                contenders["web_fetch + Redis breaker"] = lambda url: fetch(
                    url, net, limits=limits, secrets=(), breakers=on_redis, convert=False
                )
            contenders["web_fetch HTML -> Markdown"] = None
            text_url, html_url = f"{base}/text", f"{base}/html"

            def timed(fn: Any, url: str) -> Any:
                def one(_: int) -> float:
                    t = now()
                    fn(url)
                    return (now() - t) * 1000

                return one

            fns = {k: timed(fn, text_url) for k, fn in contenders.items() if fn is not None}
            fns["web_fetch HTML -> Markdown"] = timed(
                lambda url: fetch(url, net, limits=limits, secrets=(), breakers=folder), html_url
            )
            fns["bare httpx.get (HTML)"] = timed(
                lambda url: httpx.get(url, verify=shared_tls).raise_for_status(), html_url
            )
            rounds(fns, 20)  # warm-up
            samples = rounds(fns, n_rounds)
    finally:
        server.shutdown()
        server.server_close()
    bare = pct(samples["bare httpx.get"], 50)
    rows = [(k, pct(v, 50), pct(v, 99), x(ratio(pct(v, 50), bare))) for k, v in samples.items()]
    show(
        f"[fetch] one GET of a local page, {n_rounds} rounds (milliseconds; ratio to the "
        "bare text GET's p50)",
        ("contender", "p50", "p99", "p50 / bare"),
        rows,
    )
    res.figures = {k: {"p50_ms": pct(v, 50), "p99_ms": pct(v, 99)} for k, v in samples.items()}
    tool = pct(samples["web_fetch + state-folder breaker"], 50)
    r = ratio(tool, bare)
    res.target("web_fetch / bare httpx GET, p50 (embedded breaker)", "< 1.3x", x(r), r < 1.3)
    res.print_targets()
    return res
