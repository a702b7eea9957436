"""A pooled browser call against a cold Playwright launch per call.

Both read the same local page, whose text is built by JavaScript, in
interleaved rounds of the same run:

- pooled: `orchestrator.tools.web.browser.run` on a BrowserPool of 2 (a fresh
  context per call, the call's egress proxy and route checks included);
- cold: Playwright's driver already running, then per call: launch the system
  Chromium with the same arguments, open a page, read its text, close.

Target: pooled at least 5x faster at p50 (issue 6). Figures in ms.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import Options, Result, now, pct, rounds, show, x

PAGE = (
    "<title>bench</title><div id=out></div><script>document.getElementById('out')"
    ".textContent = Array.from({length: 50}, (_, i) => 'line ' + i).join('\\n')</script>"
)


def run(opts: Options) -> Result:
    from playwright.sync_api import sync_playwright

    from orchestrator.guard.policy import Network
    from orchestrator.tools.web.browser import BrowserRequest
    from orchestrator.tools.web.browser import run as browse
    from orchestrator.tools.web.browser_pool import CHROMIUM_ARGS, BrowserPool, PoolConfig
    from tests.browser_helpers import html, serve

    res = Result("browser")
    n = 10 if opts.quick else 30
    net = Network(enabled=True, allow_private=("127.0.0.1",))
    with (
        serve("127.0.0.1", {"/": html(PAGE)}) as site,
        tempfile.TemporaryDirectory() as state,
        sync_playwright() as pw,
    ):
        url = site.url("/")
        pool = BrowserPool(PoolConfig(size=2, state_dir=Path(state)))
        request = BrowserRequest(url=url)

        def pooled(_: int) -> float:
            t = now()
            out = browse(request, net=net, pool=pool).output
            assert out.startswith("line 0"), out[:80]
            return (now() - t) * 1000

        def cold(_: int) -> float:
            t = now()
            browser = pw.chromium.launch(
                executable_path="/usr/bin/chromium", args=list(CHROMIUM_ARGS)
            )
            page = browser.new_page()
            page.goto(url)
            out = page.inner_text("body")
            browser.close()
            assert out.startswith("line 0"), out[:80]
            return (now() - t) * 1000

        try:
            rounds({"pooled": pooled, "cold": cold}, 2)  # warm-up: both launched
            samples = rounds({"pooled": pooled, "cold": cold}, n)
            state_after = pool.snapshot()
        finally:
            pool.close()
    p = {k: (pct(v, 50), pct(v, 99)) for k, v in samples.items()}
    speedup = p["cold"][0] / p["pooled"][0]
    show(
        f"[browser] read a JavaScript-built page, {n} calls each (ms)",
        ("contender", "p50", "p99"),
        [(k, *v) for k, v in p.items()],
    )
    res.figures = {k: {"p50_ms": v[0], "p99_ms": v[1]} for k, v in p.items()} | {
        "speedup_p50": speedup,
        "pool": state_after.__dict__,
    }
    res.target("pooled vs cold launch, p50", ">= 5x faster", x(speedup), speedup >= 5)
    res.print_targets()
    return res
