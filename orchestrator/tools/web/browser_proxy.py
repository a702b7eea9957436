"""Egress for one browser context: a forward proxy only that context uses.

Chromium resolves names itself, so a check of the URL followed by Chromium's
own connect leaves a DNS-rebinding window (public at check time, 127.0.0.1 at
connect time). The pool closes it this way:

- every Chromium is launched with a dead proxy (`127.0.0.1:9`, nothing
  listens there), so a context without its own proxy reaches nothing;
- every context the pool makes gets its own `Guard`: a proxy on an
  ephemeral loopback port, passed as the context's `proxy`. Chromium then
  never resolves or connects to a site itself: it sends `GET http://...`
  or `CONNECT host:443` to the guard, which runs `check_url` on the URL (or
  on `https://host:port/` for a tunnel, whose path it cannot see),
  `resolve_checked(host, port, net)`, and connects to exactly the addresses
  that check returned. TLS stays end to end: Chromium verifies the site's
  certificate for the host name inside the tunnel.
- Redirect hops, subresources, fetch/XHR, WebSockets and preconnects all
  travel through the proxy, so each one is checked (Playwright's route
  handler does not see redirect hops; the proxy does).
- The route handler (`Guard.route`) also checks every request it sees, so a
  denied URL fails before any connection and the call's `blocked` list names
  it with the rule.

A guard has no policy (`net is None`) until a call binds one, and refuses
everything until then: a pre-warmed context cannot reach the network.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from orchestrator.guard.egress import EgressDenied, check_url, resolve_checked, url_port

__all__ = ["Guard", "Blocked", "DEAD_PROXY", "DENIED_HEADER"]

DENIED_HEADER = "X-Orchestrator-Egress"
DEAD_PROXY = "http://127.0.0.1:9"  # the launch-wide proxy: discard port, nothing listens
_HEAD_LIMIT = 64 * 1024
_HOP_HEADERS = (b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive")


@dataclass(frozen=True)
class Blocked:
    url: str
    rule_id: str
    reason: str


@dataclass
class Guard:
    """The proxy of one context. `bind(net, max_bytes)` before the call;
    `close()` when the context closes (the pool does both)."""

    net: Any = None
    max_bytes: int = 50 * 1024 * 1024
    received: int = 0
    blocked: list[Blocked] = field(default_factory=list)
    _server: asyncio.AbstractServer | None = None
    _conns: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def bind(self, net: Any, max_bytes: int) -> None:
        self.net, self.max_bytes = net, max_bytes

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._conns):
            w.transport.abort()
        self._conns.clear()

    # -- checks ------------------------------------------------------------------------

    def _deny(self, url: str, rule_id: str, reason: str) -> None:
        if not any(b.url == url and b.rule_id == rule_id for b in self.blocked):
            self.blocked.append(Blocked(url, rule_id, reason))

    def refusal(self, url: str) -> Blocked | None:
        return next((b for b in self.blocked if b.url == url), None)

    def check(self, url: str) -> bool:
        """The URL part of the egress check, recording a refusal."""
        if self.net is None:
            self._deny(url, "browser-unbound", "the context has no call bound to it")
            return False
        try:
            check_url(url, self.net)
        except EgressDenied as exc:
            self._deny(url, exc.rule_id, exc.reason)
            return False
        return True

    async def _addresses(self, url: str, host: str, port: int) -> list[str] | None:
        if not self.check(url):
            return None
        loop = asyncio.get_running_loop()
        try:  # getaddrinfo blocks: off the pool's loop
            found = await loop.run_in_executor(None, resolve_checked, host, port, self.net)
        except EgressDenied as exc:
            self._deny(url, exc.rule_id, exc.reason)
            return None
        return [str(ip) for ip in found]

    async def route(self, route: Any, request: Any) -> None:
        """Playwright's `context.route("**/*", guard.route)`: abort what the URL
        check refuses, before any connection."""
        url = request.url
        if url.startswith(("data:", "blob:")) and not request.is_navigation_request():
            await route.continue_()  # inline content: no network
            return
        if self.check(url):
            await route.continue_()
        else:
            await route.abort("blockedbyclient")

    # -- the proxy ---------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            if len(head) > _HEAD_LIMIT:
                return
            line, _, rest = head.partition(b"\r\n")
            try:
                method, target, version = line.decode("latin-1").split(" ")
            except ValueError:
                return
            if method.upper() == "CONNECT":
                host, _, port_text = target.rpartition(":")
                host = host.strip("[]")
                port = int(port_text) if port_text.isdigit() else 443
                url = f"https://{target}/" if port != 443 else f"https://{host}/"
                addrs = await self._addresses(url, host, port)
                if addrs is None:
                    writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                    return
                ureader, upstream = await _connect(addrs, port)
                writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            else:
                parts = urlsplit(target)
                if parts.scheme not in ("http",) or not parts.hostname:
                    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    return
                addrs = await self._addresses(target, parts.hostname, url_port(parts))
                if addrs is None:  # the tool turns this into EgressDenied (a navigation)
                    writer.write(
                        b"HTTP/1.1 403 Forbidden\r\n"
                        + DENIED_HEADER.encode()
                        + b": denied\r\nContent-Length: 0\r\n\r\n"
                    )
                    return
                ureader, upstream = await _connect(addrs, url_port(parts))
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                headers = [
                    h
                    for h in rest.split(b"\r\n")
                    if h and h.split(b":", 1)[0].strip().lower() not in _HOP_HEADERS
                ]
                upstream.write(
                    f"{method} {path} {version}\r\n".encode("latin-1")
                    + b"\r\n".join(headers)
                    + b"\r\nConnection: close\r\n\r\n"
                )
            self._conns.add(upstream)
            # The response direction decides: when the site is done, so is the
            # connection (the request direction may idle on a keep-alive).
            up = asyncio.ensure_future(self._pipe(reader, upstream, count=False))
            try:
                await self._pipe(ureader, writer, count=True)
            finally:
                up.cancel()
        except OSError:
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    self._conns.discard(w)
                    with contextlib.suppress(Exception):
                        w.close()

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, count: bool
    ) -> None:
        try:
            while data := await src.read(65536):
                if count:
                    self.received += len(data)
                    if self.received > self.max_bytes:
                        self._deny(
                            "(response bytes)",
                            "browser-bytes",
                            f"the call received more than {self.max_bytes} bytes",
                        )
                        dst.transport.abort()
                        return
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                if dst.can_write_eof():
                    dst.write_eof()


async def _connect(
    addrs: list[str], port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The first of the checked addresses that accepts a connection."""
    last: OSError | None = None
    for addr in addrs:
        try:
            return await asyncio.wait_for(asyncio.open_connection(addr, port), 10.0)
        except (TimeoutError, OSError) as exc:
            last = exc if isinstance(exc, OSError) else OSError(f"connect to {addr} timed out")
    raise last or OSError("no address")
