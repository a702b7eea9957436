"""`web_search`: a provider interface and two providers.

- `SearxNG`: a SearxNG instance's JSON API, `GET {base}/search?q=...&format=json`
  (no account; the instance must have `json` among its `search.formats`).
- `Brave`: the Brave Search API, `GET https://api.search.brave.com/res/v1/web/search`
  with the key in `X-Subscription-Token` (a header, never the URL).

Both go through `net.fetch.fetch`, so the egress rules, retries, caps and
circuit breakers apply to the provider's host like to any fetch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode

import httpx
import orjson

from orchestrator.errors import ConfigError, ToolError
from orchestrator.guard.egress import NetworkRules
from orchestrator.guard.egress_connect import egress_transport
from orchestrator.tools.web.fetch import FetchLimits, fetch, limits_from

__all__ = ["SearchResult", "SearchProvider", "SearxNG", "Brave", "provider_from", "render"]

BRAVE_URL = "https://api.search.brave.com/res/v1/web/search"


@dataclass(frozen=True)
class SearchResult:
    title: str
    url: str
    snippet: str


class SearchProvider(Protocol):
    name: str

    def search(
        self, query: str, net: NetworkRules, *, limit: int = 10, **fetch_kw: Any
    ) -> list[SearchResult]:
        """Results for `query`, best first, at most `limit`."""
        ...


def _json(body: str, provider: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ToolError(
            f"{provider} answered with something that is not JSON; check the "
            "search URL (SearxNG needs `json` in search.formats)"
        ) from None


@dataclass(frozen=True)
class SearxNG:
    base_url: str
    name: str = "searxng"

    def search(
        self, query: str, net: NetworkRules, *, limit: int = 10, **fetch_kw: Any
    ) -> list[SearchResult]:
        url = f"{self.base_url.rstrip('/')}/search?{urlencode({'q': query, 'format': 'json'})}"
        got = fetch(url, net, convert=False, **fetch_kw)
        data = _json(got.text, "SearxNG")
        return [
            SearchResult(str(r.get("title", "")), str(r.get("url", "")), str(r.get("content", "")))
            for r in data.get("results", [])[:limit]
            if r.get("url")
        ]


@dataclass(frozen=True)
class Brave:
    api_key: str = field(repr=False)  # a secret: never in a repr or log
    base_url: str = BRAVE_URL
    name: str = "brave"

    def search(
        self, query: str, net: NetworkRules, *, limit: int = 10, **fetch_kw: Any
    ) -> list[SearchResult]:
        url = f"{self.base_url}?{urlencode({'q': query, 'count': min(limit, 20)})}"
        # The key goes in a header: give the transport a client default header.
        transport = _HeaderTransport(
            egress_transport(net),
            {"X-Subscription-Token": self.api_key, "Accept": "application/json"},
        )
        got = fetch(url, net, convert=False, transport=transport, **fetch_kw)
        data = _json(got.text, "Brave")
        return [
            SearchResult(
                str(r.get("title", "")), str(r.get("url", "")), str(r.get("description", ""))
            )
            for r in (data.get("web") or {}).get("results", [])[:limit]
            if r.get("url")
        ]


class _HeaderTransport(httpx.BaseTransport):
    """Adds fixed headers to every request (the provider's key)."""

    def __init__(self, inner: httpx.BaseTransport, headers: dict[str, str]) -> None:
        self.inner, self.headers = inner, headers

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.headers.update(self.headers)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def provider_from(settings: Any) -> SearchProvider:
    if settings.search_provider == "brave":
        if settings.search_api_key is None:
            raise ConfigError(
                "web_search uses Brave but ORCH_SEARCH_API_KEY is not set; set "
                "it (a secret) or use ORCH_SEARCH_PROVIDER=searxng"
            )
        return Brave(settings.search_api_key.get_secret_value(), settings.search_url or BRAVE_URL)
    if not settings.search_url:
        raise ConfigError(
            "web_search needs a SearxNG instance: set ORCH_SEARCH_URL "
            "(e.g. http://searx.internal:8888)"
        )
    return SearxNG(settings.search_url)


def render(query: str, results: list[SearchResult]) -> str:
    if not results:
        return f"no results for {query!r}"
    return "\n\n".join(
        f"{i}. {r.title}\n   {r.url}\n   {r.snippet}" for i, r in enumerate(results, 1)
    )


def limits(settings: Any) -> FetchLimits:
    return limits_from(settings, max_bytes=min(settings.fetch_max_bytes, 1024 * 1024))
