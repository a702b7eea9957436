"""The browser tool: a page rendered by Chromium, as text or a screenshot.

    from orchestrator.tools.web.browser import BrowserRequest, run
    result = run(BrowserRequest(url="https://example.com", actions=[
                     {"action": "fill", "selector": "#q", "value": "celery"},
                     {"action": "click", "selector": "button[type=submit]"},
                     {"action": "wait_for", "selector": "#results"}],
                 output="text"),
                 net=policy.network,          # orchestrator.guard.policy.Network of the session
                 pool=None,                   # None: this process's pool (get_pool())
                 timeout_s=30.0)              # the whole call, waiting for a browser included

`run(request, *, net, pool=None, timeout_s=None) -> BrowserResult` (a
ToolResult). It opens `request.url` in a fresh context of a pooled Chromium,
waits for `wait_until`, runs `actions` in order, then returns:

- output="text": the page's rendered text (`innerText` of `selector` or of
  the body, after JavaScript ran), truncated to `max_output_bytes`;
- output="screenshot": a PNG kept as `<artifacts_dir>/<sha256>.png`; the
  result's `artifact` has its sha256, size and path, and `output` one line
  naming them, so the ToolCallCompleted event records the digest.

Raises EgressDenied (exit 3) when the policy refuses the URL itself,
ToolInputError for a selector that never appears or a page that fails to load,
ToolTimeout past `timeout_s`, BrowserUnavailable when Chromium cannot start.
Every request the page makes (subresources, redirect hops, XHR, WebSockets)
goes through the session's egress policy at the address actually connected to
(orchestrator.tools.web.browser_proxy); the refused ones are listed in
`result.blocked` and at the end of the text output.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator import lazy
from orchestrator.errors import ToolInputError
from orchestrator.guard.egress import EgressDenied, check_url
from orchestrator.tools.base import ToolResult
from orchestrator.tools.web.browser_pool import BrowserPool, Lease, get_pool
from orchestrator.tools.web.browser_proxy import DENIED_HEADER, Blocked

__all__ = [
    "BrowserRequest",
    "BrowserResult",
    "Artifact",
    "Click",
    "Fill",
    "WaitFor",
    "run",
    "store_artifact",
]


class _Action(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    selector: str = Field(min_length=1, max_length=500)


class Click(_Action):
    action: Literal["click"]


class Fill(_Action):
    action: Literal["fill"]
    value: str = Field(max_length=10_000)


class WaitFor(_Action):
    action: Literal["wait_for"]
    state: Literal["attached", "detached", "visible", "hidden"] = "visible"


Action = Annotated[Click | Fill | WaitFor, Field(discriminator="action")]


class BrowserRequest(BaseModel):
    """What a browser call does; validated before any browser is touched."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    url: str = Field(min_length=1, max_length=8192)
    output: Literal["text", "screenshot"] = "text"
    actions: tuple[Action, ...] = Field(default=(), max_length=20)
    selector: str | None = Field(
        default=None,
        max_length=500,
        description=("text: read this element's text instead of the body's"),
    )
    wait_until: Literal["load", "domcontentloaded", "networkidle"] = "load"
    full_page: bool = False
    viewport: tuple[int, int] = (1280, 800)
    max_output_bytes: int = Field(default=64 * 1024, ge=1, le=10 * 1024 * 1024)
    max_bytes: int = Field(
        default=50 * 1024 * 1024,
        ge=1024,
        description=("All responses of the call together; past it the connection is cut"),
    )

    @field_validator("url")
    @classmethod
    def _http_only(cls, v: str) -> str:
        if not v.lower().startswith(("http://", "https://")):
            raise ValueError(
                "the browser opens http:// and https:// URLs only "
                "(file:, data:, javascript: and others are refused)"
            )
        return v


@dataclass(frozen=True)
class Artifact:
    sha256: str
    size: int
    path: str
    media_type: str = "image/png"


@dataclass(frozen=True)
class BrowserResult(ToolResult):
    url: str = ""  # where the page ended (after redirects and actions)
    status: int | None = None  # the main document's HTTP status
    title: str = ""
    artifact: Artifact | None = None
    blocked: tuple[Blocked, ...] = field(default=())


def store_artifact(data: bytes, folder: Path, suffix: str = ".png") -> Artifact:
    """Keep `data` as folder/<sha256><suffix> (content-addressed, written atomically)."""
    digest = hashlib.sha256(data).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}{suffix}"
    if not path.exists():
        tmp = folder / f".{digest}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return Artifact(sha256=digest, size=len(data), path=str(path))


def run(
    request: BrowserRequest,
    *,
    net: Any,
    pool: BrowserPool | None = None,
    timeout_s: float | None = None,
    artifacts_dir: Path | None = None,
) -> BrowserResult:
    """See the module docstring. A screenshot needs `artifacts_dir` (the
    runner passes Settings.artifacts_dir); `pool` defaults to this process's,
    made with the pool's defaults."""
    check_url(request.url, net)  # refused before any browser is touched
    if request.output == "screenshot" and artifacts_dir is None:
        raise ToolInputError(
            "a screenshot needs a folder to keep it in: pass artifacts_dir "
            "(Settings.artifacts_dir, ORCH_BROWSER_ARTIFACTS_DIR)"
        )
    pool = pool or get_pool()
    started = time.monotonic()

    async def call(lease: Lease) -> BrowserResult:
        return await _drive(lease, request, artifacts_dir)

    result = pool.run(call, net=net, timeout_s=timeout_s, max_bytes=request.max_bytes)
    return _with_duration(result, time.monotonic() - started)


def _with_duration(r: BrowserResult, duration_s: float) -> BrowserResult:
    return replace(r, duration_s=duration_s)


async def _drive(lease: Lease, req: BrowserRequest, artifacts_dir: Path | None) -> BrowserResult:
    PlaywrightError = lazy.module("playwright.async_api").Error  # noqa: N806 - a class

    page = lease.page
    if req.viewport != (1280, 800):  # the pool's contexts start at 1280x800
        await page.set_viewport_size({"width": req.viewport[0], "height": req.viewport[1]})
    try:
        response = await page.goto(req.url, wait_until=req.wait_until, timeout=0)
    except PlaywrightError as exc:
        if lease.guard.blocked:
            # The document failed and the guard refused a request on the way: a
            # redirect hop to somewhere the policy forbids.
            b = lease.guard.blocked[-1]
            raise EgressDenied(
                b.url,
                b.rule_id,
                b.reason.rstrip("."),
                f"The page {req.url} redirected there and was not opened",
            ) from None
        raise ToolInputError(f"the browser could not load {req.url}: {_first_line(exc)}") from None
    _refused_navigation(lease, response)
    for n, act in enumerate(req.actions, 1):
        try:
            if isinstance(act, Click):
                await page.click(act.selector, timeout=0)
            elif isinstance(act, Fill):
                await page.fill(act.selector, act.value, timeout=0)
            else:
                await page.wait_for_selector(act.selector, state=act.state, timeout=0)
        except PlaywrightError as exc:
            raise ToolInputError(
                f"browser action {n} ({act.action} {act.selector!r}) failed: {_first_line(exc)}"
            ) from None
    _refused_navigation(lease, None)
    if not page.url.lower().startswith(("http://", "https://")):
        raise ToolInputError(
            f"the page navigated to {page.url[:80]!r}, which the browser "
            "does not read (only http and https pages are)"
        )
    title = await page.title()
    status = response.status if response is not None else None
    blocked = tuple(lease.guard.blocked)
    base = dict(url=page.url, status=status, title=title, blocked=blocked)
    if req.output == "screenshot":
        assert artifacts_dir is not None
        png = await page.screenshot(full_page=req.full_page, type="png", timeout=0)
        art = store_artifact(png, artifacts_dir)
        line = f"screenshot of {page.url}: {art.size} bytes, sha256:{art.sha256} at {art.path}\n"
        return BrowserResult(output=line, output_bytes=len(line), count=1, artifact=art, **base)
    try:
        text = await (
            page.inner_text(req.selector, timeout=0)
            if req.selector
            else page.evaluate("() => document.body ? document.body.innerText : ''")
        )
    except PlaywrightError as exc:
        raise ToolInputError(
            f"could not read the text of {req.selector or 'the page'}: {_first_line(exc)}"
        ) from None
    if blocked:
        text += (
            "\n\n[blocked by egress policy: "
            + "; ".join(f"{b.url} ({b.rule_id})" for b in blocked[:10])
            + "]"
        )
    data = text.encode("utf-8")
    return BrowserResult(output=_cap(data, req.max_output_bytes), output_bytes=len(data), **base)


def _refused_navigation(lease: Lease, response: Any) -> None:
    """EgressDenied when the page's document is the guard's refusal (a
    redirect hop to a forbidden address, or a navigation by an action)."""
    url = response.url if response is not None else lease.page.url
    if response is not None and response.headers.get(DENIED_HEADER.lower()) is None:
        return
    b = lease.guard.refusal(url)
    if b is not None:
        raise EgressDenied(url, b.rule_id, b.reason.rstrip("."), "The page was not opened")


def _cap(data: bytes, limit: int) -> str:
    if len(data) <= limit:
        return data.decode("utf-8")
    return (
        data[:limit].decode("utf-8", errors="ignore")
        + f"\n[... {len(data) - limit} more bytes not shown]"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
