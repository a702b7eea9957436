"""The connection side of egress: an httpcore network backend that resolves
a host once, checks every address (`egress.resolve_checked`) and connects to
exactly those, so a DNS answer cannot change between the check and the
connection (rebinding). `egress_transport(net)` is an httpx transport built
on it; the web tools use nothing else to reach the network.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import httpcore
import httpx

from orchestrator.guard.egress import EgressDenied, NetworkRules, resolve_checked

__all__ = ["EgressBackend", "egress_transport"]


class EgressBackend(httpcore.SyncBackend):
    """An httpcore network backend that connects only to addresses
    `resolve_checked` allowed: the name is resolved once, here, and the
    socket goes to the checked address (no second lookup a rebinding DNS
    server could answer differently). TLS keeps the URL's host for SNI and
    certificate checks because httpcore passes it to `start_tls` itself."""

    def __init__(self, net: NetworkRules) -> None:
        super().__init__()
        self.net = net

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        last: Exception | None = None
        for ip in resolve_checked(host, port, self.net):
            try:
                return super().connect_tcp(
                    str(ip),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise EgressDenied(
            "a unix socket",
            "egress-scheme",
            "network tools connect over TCP only",
            "Use an http(s) URL",
        )


def egress_transport(net: NetworkRules, *, verify: bool = True) -> httpx.HTTPTransport:
    """An httpx transport whose every connection goes through `EgressBackend`.

    httpx's HTTPTransport takes no network backend argument, so its pool is
    rebuilt with one (the same constructor httpx calls, plus the backend);
    `tests/test_egress.py` checks that a request really goes through it.
    Use it with `trust_env=False`: a proxy from the environment would
    otherwise carry requests past the backend."""
    ctx = _ssl_context(verify)
    transport = httpx.HTTPTransport(verify=ctx, retries=0)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=ctx, http1=True, http2=False, retries=0, network_backend=EgressBackend(net)
    )
    return transport


@lru_cache(maxsize=2)
def _ssl_context(verify: bool) -> Any:
    """One TLS context per process: loading the CA bundle costs tens of
    milliseconds, more than a whole local GET (an SSLContext is safe to share
    between connections and threads)."""
    return httpx.create_ssl_context(verify=verify)
