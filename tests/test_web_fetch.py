"""web_fetch against a real local server (loopback allowed in the policy):
timeouts, resets, retries honouring Retry-After, redirects to forbidden
addresses, caps, a gzip bomb; and a job with a fetch step end to end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestrator.errors import ToolTimeout
from orchestrator.guard.egress import EgressDenied
from orchestrator.guard.policy import Network
from orchestrator.tools.web.fetch import FetchFailed, FetchLimits, TooManyRedirects, fetch
from tests.netserver import NetServer

LOOPBACK = Network(enabled=True, allow_private=("127.0.0.1",))
FAST = FetchLimits(backoff_base_s=0.01, timeout_s=5, budget_s=10)


@pytest.fixture(scope="module")
def server() -> NetServer:
    with NetServer() as s:
        yield s


def test_html_comes_back_as_markdown_with_what_matters(server: NetServer) -> None:
    r = fetch(server.url("/html"), LOOPBACK, limits=FAST, secrets=())
    assert r.status == 200 and r.content_type.startswith("text/html")
    assert "# Heading" in r.text and "**bold**" in r.text and "[link](/next)" in r.text
    assert "hidden" not in r.text  # script contents are not text
    assert r.final_url == server.url("/html") and r.redirects == ()


def test_a_slow_answer_times_out_after_its_attempts(server: NetServer) -> None:
    start = time.monotonic()
    with pytest.raises(ToolTimeout, match="timed out .* after 2 attempt"):
        fetch(
            server.url("/slow?s=3"),
            LOOPBACK,
            secrets=(),
            limits=FetchLimits(timeout_s=0.3, attempts=2, backoff_base_s=0.01),
        )
    assert time.monotonic() - start < 2.5


def test_a_connection_reset_is_retried_then_reported(server: NetServer) -> None:
    before = server.hits["/reset"]
    with pytest.raises(FetchFailed, match="after 3 attempt") as info:
        fetch(server.url("/reset"), LOOPBACK, limits=FAST, secrets=())
    assert info.value.transient
    assert server.hits["/reset"] - before == 3


def test_429_and_503_are_retried_honouring_retry_after(server: NetServer) -> None:
    server.sequences["r1"] = [(503, {}), (429, {"Retry-After": "1"}), (200, {})]
    start = time.monotonic()
    r = fetch(server.url("/seq/r1"), LOOPBACK, limits=FAST, secrets=())
    assert r.status == 200
    assert [(x.attempt, x.reason) for x in r.retries] == [(1, "HTTP 503"), (2, "HTTP 429")]
    assert r.retries[1].delay_s >= 1.0 and time.monotonic() - start >= 1.0


def test_a_404_and_a_500_are_not_retried(server: NetServer) -> None:
    server.sequences["r2"] = [(500, {}), (200, {})]
    with pytest.raises(FetchFailed, match="HTTP 500 \\(after 1 attempt") as info:
        fetch(server.url("/seq/r2"), LOOPBACK, limits=FAST, secrets=())
    assert info.value.result.status == 500
    with pytest.raises(FetchFailed, match="HTTP 404"):
        fetch(server.url("/nothing"), LOOPBACK, limits=FAST, secrets=())


def test_retries_stop_at_the_time_budget(server: NetServer) -> None:
    server.sequences["r3"] = [(503, {"Retry-After": "30"}), (200, {})]
    start = time.monotonic()
    with pytest.raises(FetchFailed, match="HTTP 503"):
        fetch(
            server.url("/seq/r3"),
            LOOPBACK,
            secrets=(),
            limits=FetchLimits(budget_s=2, attempts=5, backoff_base_s=0.01),
        )
    assert time.monotonic() - start < 2


def test_a_redirect_to_loopback_is_refused_when_only_a_name_is_allowed(server: NetServer) -> None:
    net = Network(
        enabled=True, allow_hosts=(f"localhost:{server.port}",), allow_private=("localhost",)
    )
    assert fetch(server.url("/ok", host="localhost"), net, limits=FAST, secrets=()).status == 200
    target = server.url("/ok")
    before = server.hits["/ok"]
    with pytest.raises(EgressDenied) as info:
        fetch(server.url(f"/redirect?to={target}", host="localhost"), net, limits=FAST, secrets=())
    assert info.value.rule_id == "egress-host-not-allowed"
    assert server.hits["/ok"] == before  # the forbidden hop was never requested


@pytest.mark.parametrize(
    "target,rule",
    [
        ("http://169.254.169.254/latest/meta-data/", "egress-metadata"),
        ("http://0x7f000002:1/", "egress-private-address"),  # 127.0.0.2: not allowed
        ("file:///etc/passwd", "egress-scheme"),
    ],
)
def test_redirects_to_forbidden_targets_are_refused(
    server: NetServer, target: str, rule: str
) -> None:
    with pytest.raises(EgressDenied) as info:
        fetch(server.url(f"/redirect?to={target}"), LOOPBACK, limits=FAST, secrets=())
    assert info.value.rule_id == rule


def test_redirects_are_followed_and_capped(server: NetServer) -> None:
    r = fetch(server.url("/redirect?to=/json&code=301"), LOOPBACK, limits=FAST, secrets=())
    assert r.redirects == (server.url("/json"),) and r.text == '{"a": 1}'
    with pytest.raises(TooManyRedirects, match="more than 5 times"):
        fetch(server.url("/loop"), LOOPBACK, limits=FAST, secrets=())


def test_an_oversized_body_stops_at_the_cap(server: NetServer) -> None:
    r = fetch(
        server.url("/big?n=500000"), LOOPBACK, secrets=(), limits=FetchLimits(max_bytes=10_000)
    )
    assert r.truncated and r.body_bytes == 10_000


def test_a_gzip_bomb_stops_at_the_cap_not_at_its_size(server: NetServer) -> None:
    r = fetch(server.url("/bomb"), LOOPBACK, secrets=(), limits=FetchLimits(max_bytes=100_000))
    assert r.truncated and r.body_bytes == 100_000  # of 64 MiB inflated
    small = fetch(server.url("/gzip"), LOOPBACK, secrets=(), limits=FAST)
    assert not small.truncated and small.text.startswith("compressed text")


def test_no_proxy_or_credentials_leak_in_requests(server: NetServer) -> None:
    r = fetch(server.url("/headers"), LOOPBACK, limits=FAST, secrets=())
    assert "agent-orchestrator" in r.text and "authorization" not in r.text.lower()


def test_a_job_fetch_step_runs_end_to_end_through_a_real_worker(
    tmp_path: Path, server: NetServer
) -> None:
    import json

    from tests.cli_helpers import cli, shape_env, state_store

    target = tmp_path / "repo"
    target.mkdir()
    (target / "README.md").write_text("x\n")
    spec = tmp_path / "job.yaml"
    spec.write_text(f"""
name: fetch-e2e
targets: [{target}]
tier: read-only
policy:
  tier: read-only
  network: {{enabled: true, allow_hosts: ["127.0.0.1:{server.port}"],
             allow_private: ["127.0.0.1"]}}
steps:
  - kind: fetch
    url: {server.url("/html")}
  - kind: fetch
    url: {server.url("/redirect?to=http://169.254.169.254/")}
    continue_on_error: true
""")
    env = shape_env(tmp_path)
    result = cli(env, "run", str(spec), "--json", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    job = json.loads(result.stdout)
    session_id = job["sessions"][0]["session_id"]
    store = state_store(env)
    try:
        events = list(store.read_stream(session_id))
    finally:
        store.close()
    by_type: dict[str, list] = {}
    for e in events:
        by_type.setdefault(e.type, []).append(e.payload)
    assert [d.decision for d in by_type["PermissionDecided"]] == ["allow", "allow"]
    done, failed = by_type["ToolCallCompleted"][0], by_type["ToolCallFailed"][0]
    assert done.tool == "fetch" and "# Heading" in done.output and "status: 200" in done.output
    assert failed.error == "EgressDenied" and "egress-host-not-allowed" in failed.message
    assert by_type["SessionCompleted"]
