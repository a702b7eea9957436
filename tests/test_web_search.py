"""web_search against a real local server that answers like SearxNG's JSON
API (and like Brave's, with its key header)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config.settings import Settings
from orchestrator.errors import ConfigError
from orchestrator.guard.egress import EgressDenied
from orchestrator.guard.policy import Network
from orchestrator.tools.web.fetch import FetchFailed
from orchestrator.tools.web.search import Brave, SearchResult, SearxNG, provider_from, render
from tests.netserver import NetServer

LOOPBACK = Network(enabled=True, allow_private=("127.0.0.1",))


@pytest.fixture(scope="module")
def server() -> NetServer:
    with NetServer() as s:
        yield s


def test_searxng_results_are_title_url_and_snippet(server: NetServer) -> None:
    results = SearxNG(server.url("")).search("celery retries", LOOPBACK, limit=2)
    assert results == [
        SearchResult(
            "celery retries result 1", "https://example.org/1", "snippet 1 about celery retries"
        ),
        SearchResult(
            "celery retries result 2", "https://example.org/2", "snippet 2 about celery retries"
        ),
    ]
    assert render("celery retries", results).startswith("1. celery retries result 1\n")


def test_brave_sends_its_key_in_a_header_never_in_the_url(server: NetServer) -> None:
    got = Brave("brave-test-key-123", server.url("/brave")).search("x y", LOOPBACK)
    assert got == [SearchResult("Brave one", "https://brave.example/1", "about x y")]
    with pytest.raises(FetchFailed, match="HTTP 401"):
        Brave("wrong-key-456789", server.url("/brave")).search("x", LOOPBACK)


def test_the_provider_host_is_held_to_the_egress_rules(server: NetServer) -> None:
    with pytest.raises(EgressDenied) as info:
        SearxNG(server.url("")).search("x", Network(enabled=True))
    assert info.value.rule_id == "egress-private-address"


def test_providers_come_from_the_settings(tmp_path: Path) -> None:
    assert isinstance(provider_from(Settings(search_url="http://searx:8888")), SearxNG)
    brave = provider_from(Settings(search_provider="brave", search_api_key="k" * 20))
    assert isinstance(brave, Brave) and "k" * 20 not in repr(Settings(search_api_key="k" * 20))
    with pytest.raises(ConfigError, match="ORCH_SEARCH_URL"):
        provider_from(Settings())
    with pytest.raises(ConfigError, match="ORCH_SEARCH_API_KEY"):
        provider_from(Settings(search_provider="brave"))
