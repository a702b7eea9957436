"""The browser tool against local servers and the system Chromium (no mocks).

Loopback 127.0.0.1 is allowed explicitly in the test policy; 127.0.0.2 is
not, so a second server there stands for an address the policy forbids and
records whether anything reached it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator.errors import ToolTimeout
from orchestrator.guard.egress import EgressDenied
from orchestrator.guard.policy import Network
from orchestrator.tools.web.browser import BrowserRequest, run
from orchestrator.tools.web.browser_pool import BrowserPool, PoolConfig, marked_processes
from tests.browser_helpers import Site, html, serve

pytestmark = pytest.mark.skipif(
    not os.path.exists("/usr/bin/chromium"), reason="needs the system Chromium"
)

NET = Network(enabled=True, allow_private=("127.0.0.1",))

JS_PAGE = html(
    "<title>js</title><div id=out>not yet</div><script>"
    "document.getElementById('out').textContent = ['rendered', 'by', 'js'].join(' ')"
    "</script>"
)
FORM = html(
    '<input id=name><button id=go onclick="setTimeout(() => {'
    "const p = document.createElement('p'); p.id = 'hello';"
    "p.textContent = 'hello ' + document.getElementById('name').value;"
    'document.body.appendChild(p)}, 200)">go</button>'
)
COOKIE_SET = html(
    "<script>document.cookie = 'js_cookie=1; path=/';localStorage.setItem('k', 'v')</script>set",
    headers={"Set-Cookie": "server_cookie=1; Path=/"},
)
COOKIE_READ = html(
    "<div id=c></div><script>document.getElementById('c').textContent = "
    "'cookies=[' + document.cookie + '] storage=[' + "
    "(localStorage.getItem('k') || '') + ']'</script>"
)
HANG = html("<p>before</p><script>while (true) {}</script>")


@pytest.fixture(scope="module")
def forbidden() -> Iterator[Site]:
    with serve("127.0.0.2", {"/secret": html("secret"), "/pixel.png": html("x")}) as site:
        yield site


@pytest.fixture(scope="module")
def site(forbidden: Site) -> Iterator[Site]:
    def redirect(s: Site, _: object) -> tuple[int, dict[str, str], bytes]:
        return 302, {"Location": forbidden.url("/secret")}, b""

    def to_js(s: Site, _: object) -> tuple[int, dict[str, str], bytes]:
        return 302, {"Location": "/js"}, b""

    pages = {
        "/js": JS_PAGE,
        "/form": FORM,
        "/set": COOKIE_SET,
        "/read": COOKIE_READ,
        "/hang": HANG,
        "/redirect-out": redirect,
        "/redirect-in": to_js,
        "/subresource": html(f"<p>page</p><img src='{forbidden.url('/pixel.png')}'>"),
    }
    with serve("127.0.0.1", pages) as s:
        yield s


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserPool]:
    p = BrowserPool(
        PoolConfig(
            size=2, max_uses=50, call_timeout_s=20, state_dir=tmp_path_factory.mktemp("state")
        )
    )
    yield p
    p.close()
    assert not marked_processes(f"{os.getpid()}."), "a browser outlived the pool"


def test_a_page_that_builds_its_text_in_javascript_is_read_after_rendering(site, pool) -> None:
    r = run(BrowserRequest(url=site.url("/js")), net=NET, pool=pool)
    assert r.output == "rendered by js" and r.status == 200 and r.title == "js"


def test_a_redirect_inside_the_allowed_site_is_followed(site, pool) -> None:
    r = run(BrowserRequest(url=site.url("/redirect-in")), net=NET, pool=pool)
    assert (r.output, r.url) == ("rendered by js", site.url("/js"))


def test_a_screenshot_is_stored_under_its_digest(site, pool, tmp_path: Path) -> None:
    r = run(
        BrowserRequest(url=site.url("/js"), output="screenshot"),
        net=NET,
        pool=pool,
        artifacts_dir=tmp_path,
    )
    assert r.artifact is not None
    data = Path(r.artifact.path).read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert (r.artifact.sha256, r.artifact.size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert Path(r.artifact.path) == tmp_path / f"{r.artifact.sha256}.png"
    assert f"sha256:{r.artifact.sha256}" in r.output


def test_fill_click_and_wait_for_run_in_order(site, pool) -> None:
    r = run(
        BrowserRequest(
            url=site.url("/form"),
            selector="#hello",
            actions=[
                {"action": "fill", "selector": "#name", "value": "world"},
                {"action": "click", "selector": "#go"},
                {"action": "wait_for", "selector": "#hello"},
            ],
        ),
        net=NET,
        pool=pool,
    )
    assert r.output == "hello world"


def test_an_action_outside_the_list_is_refused_before_any_browser_runs() -> None:
    with pytest.raises(ValidationError, match="evaluate"):
        BrowserRequest(url="http://127.0.0.1/", actions=[{"action": "evaluate", "selector": "x"}])
    for url in ("file:///etc/passwd", "data:text/html,<p>x", "javascript:alert(1)"):
        with pytest.raises(ValidationError, match="http:// and https:// URLs only"):
            BrowserRequest(url=url)


def test_two_calls_share_no_cookies_or_storage(site, pool) -> None:
    run(BrowserRequest(url=site.url("/set")), net=NET, pool=pool)
    first = run(BrowserRequest(url=site.url("/read")), net=NET, pool=pool)
    assert first.output == "cookies=[] storage=[]"


def test_a_url_the_policy_refuses_fails_before_a_browser_is_touched(forbidden, pool) -> None:
    calls = pool.snapshot().calls
    with pytest.raises(EgressDenied) as exc:
        run(BrowserRequest(url=forbidden.url("/secret")), net=NET, pool=pool)
    assert exc.value.rule_id == "egress-private-address"
    assert pool.snapshot().calls == calls and forbidden.hits == []


def test_a_redirect_to_a_forbidden_address_is_refused_and_never_sent(site, forbidden, pool) -> None:
    with pytest.raises(EgressDenied) as exc:
        run(BrowserRequest(url=site.url("/redirect-out")), net=NET, pool=pool)
    assert exc.value.rule_id == "egress-private-address"
    assert "/secret" not in forbidden.hits


def test_a_subresource_on_a_forbidden_address_is_blocked_and_listed(site, forbidden, pool) -> None:
    r = run(BrowserRequest(url=site.url("/subresource")), net=NET, pool=pool)
    assert r.output.startswith("page")
    assert [(b.url, b.rule_id) for b in r.blocked] == [
        (forbidden.url("/pixel.png"), "egress-private-address")
    ]
    assert "/pixel.png" not in forbidden.hits


def test_a_page_that_hangs_chromium_times_out_and_the_next_call_works(site, tmp_path) -> None:
    pool = BrowserPool(PoolConfig(size=1, state_dir=tmp_path))
    try:
        # Launched first: on a busy machine the launch alone can outlast the
        # 3 s, and the timeout must hit the hanging page, not the launch.
        assert run(BrowserRequest(url=site.url("/js")), net=NET, pool=pool).output
        started = time.monotonic()
        with pytest.raises(ToolTimeout, match="within 3 s"):
            run(BrowserRequest(url=site.url("/hang")), net=NET, pool=pool, timeout_s=3)
        assert time.monotonic() - started < 3 + 60  # stopped, not left to hang
        r = run(BrowserRequest(url=site.url("/js")), net=NET, pool=pool)
        assert r.output == "rendered by js"
        state = pool.snapshot()
        assert (state.timeouts, state.recycles, state.launches) == (1, 1, 2)
    finally:
        pool.close()


def test_a_crashed_browser_is_replaced_and_counted(site, tmp_path) -> None:
    pool = BrowserPool(PoolConfig(size=1, state_dir=tmp_path))
    try:
        assert run(BrowserRequest(url=site.url("/js")), net=NET, pool=pool).output
        pool.settle()
        ours = marked_processes(f"{os.getpid()}.")
        assert ours
        for pid in ours:
            os.kill(pid, signal.SIGKILL)
        r = run(BrowserRequest(url=site.url("/js")), net=NET, pool=pool)
        assert r.output == "rendered by js"
        state = pool.snapshot()
        assert state.crashes >= 1 and state.recycles >= 1 and state.launches == 2
    finally:
        pool.close()
