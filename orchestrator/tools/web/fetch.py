"""`web_fetch`: one HTTP(S) GET under the egress policy, with caps.

- Every hop is egress-checked: redirects are followed here, not by httpx,
  and each `Location` goes through `check_url` before the connection (which
  checks the resolved addresses itself, `egress.EgressBackend`).
- Caps: body bytes after decompression (`max_bytes`; the body is inflated
  here with zlib's `max_length`, so a gzip bomb costs at most the cap in
  memory), time (per attempt and over all attempts), redirects.
- Retries (tenacity): exponential backoff with full jitter, only for connect
  errors, timeouts, 429 and 502-504, honouring `Retry-After`, bounded in
  attempts and total time. Each retry is returned as a `Retry` (the runner
  records a ToolCallRetried event for it).
- Every attempt goes through the host's circuit breaker (`net.breaker`):
  connect errors, timeouts, 429 and 5xx count as failures.
- HTML becomes Markdown (markdownify); other text types are returned as
  they are; binary bodies are described, not returned.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin

import httpx
from markdownify import markdownify
from tenacity import RetryCallState, Retrying, retry_if_exception

from orchestrator.errors import ToolError, ToolTimeout
from orchestrator.guard.egress import EgressDenied, NetworkRules, check_url
from orchestrator.guard.egress_connect import egress_transport
from orchestrator.tools.base import ToolResult
from orchestrator.tools.web.breaker import Breakers, CircuitOpen, HostFailure

__all__ = ["FetchLimits", "FetchResult", "Retry", "fetch", "FetchFailed", "limits_from"]

RETRY_STATUSES = frozenset({429, 502, 503, 504})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
TEXT_TYPES = (
    "text/",
    "application/json",
    "application/xml",
    "application/xhtml+xml",
    "application/javascript",
    "application/ld+json",
    "application/rss+xml",
    "application/atom+xml",
)
TRANSIENT = (
    httpx.ConnectError,
    httpx.TimeoutException,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
)
MAX_BACKOFF_S = 30.0


class FetchFailed(ToolError):
    """The request did not get a usable answer (after its retries)."""

    def __init__(self, message: str, *, transient: bool = False, result: Any = None) -> None:
        super().__init__(message)
        self.transient, self.result = transient, result


class TooManyRedirects(FetchFailed):
    pass


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 2 * 1024 * 1024
    timeout_s: float = 20.0
    max_redirects: int = 5
    attempts: int = 3
    budget_s: float = 30.0
    backoff_base_s: float = 0.5
    user_agent: str = "agent-orchestrator/0.1 (+web_fetch)"


def limits_from(settings: Any, **override: Any) -> FetchLimits:
    given = {k: v for k, v in override.items() if v is not None}
    if "max_bytes" in given:
        given["max_bytes"] = min(given["max_bytes"], settings.fetch_max_bytes)
    return FetchLimits(
        **{
            "max_bytes": settings.fetch_max_bytes,
            "timeout_s": settings.fetch_timeout_s,
            "max_redirects": settings.fetch_max_redirects,
            "attempts": settings.net_retry_attempts,
            "budget_s": settings.net_retry_budget_s,
            "backoff_base_s": settings.net_retry_base_s,
            "user_agent": settings.fetch_user_agent,
        }
        | given
    )


@dataclass(frozen=True)
class Retry:
    attempt: int
    reason: str
    delay_s: float
    host: str


@dataclass(frozen=True)
class FetchResult(ToolResult):
    status: int = 0
    url: str = ""
    final_url: str = ""
    content_type: str = ""
    content_length: int | None = None  # as declared by the server
    body_bytes: int = 0  # decoded bytes read (at most max_bytes)
    truncated: bool = False
    redirects: tuple[str, ...] = ()
    retries: tuple[Retry, ...] = field(default=())
    text: str = ""


@dataclass
class _Answer:
    status: int
    headers: httpx.Headers
    body: bytes
    truncated: bool


class _StatusFailure(HostFailure):
    def __init__(self, answer: _Answer) -> None:
        super().__init__(f"HTTP {answer.status}", answer)
        self.answer = answer


# -- reading a body under a cap ------------------------------------------------------------


def _decoder(encoding: str) -> Any:
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return None
    if enc in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if enc == "deflate":
        return zlib.decompressobj(zlib.MAX_WBITS)  # zlib-wrapped; raw deflate below
    raise FetchFailed(
        f"the server answered with Content-Encoding {encoding!r}, which "
        "web_fetch does not decode (it asks for gzip or deflate only)"
    )


def read_capped(
    chunks: Iterator[bytes], encoding: str, cap: int, deadline: float
) -> tuple[bytes, bool]:
    """The decoded body, at most `cap` bytes, and whether there was more.
    Decompression is bounded by `max_length`, never by the compressed size."""
    out = bytearray()
    encodings = [e for e in encoding.split(",") if e.strip()]
    if len(encodings) > 1:
        raise FetchFailed(f"the server stacked encodings {encoding!r}; web_fetch decodes one")
    dec = _decoder(encodings[0]) if encodings else None
    first = True
    for raw in chunks:
        if time.monotonic() > deadline:
            raise ToolTimeout(
                "the body kept arriving past the fetch's time limit; raise "
                "timeout_s or ORCH_FETCH_TIMEOUT_S"
            )
        if dec is None:
            out += raw[: cap + 1 - len(out)]
        else:
            data = raw
            while data and len(out) <= cap:
                try:
                    piece = dec.decompress(data, cap + 1 - len(out))
                except zlib.error:
                    if first and encodings[0].strip().lower() == "deflate":
                        dec = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate
                        first = False
                        continue
                    raise FetchFailed(
                        "the body does not decompress as its Content-Encoding says"
                    ) from None
                first = False
                out += piece
                data = dec.unconsumed_tail
        if len(out) > cap:
            return bytes(out[:cap]), True
    return bytes(out), False


def _one(client: httpx.Client, url: str, limits: FetchLimits, deadline: float) -> _Answer:
    with client.stream("GET", url) as r:
        if r.status_code in REDIRECTS:
            body, truncated = b"", False
        else:
            body, truncated = read_capped(
                r.iter_raw(), r.headers.get("content-encoding", ""), limits.max_bytes, deadline
            )
        answer = _Answer(r.status_code, r.headers, body, truncated)
    if answer.status == 429 or answer.status >= 500:
        raise _StatusFailure(answer)
    return answer


# -- retries ---------------------------------------------------------------------------------


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, _StatusFailure):
        return exc.answer.status in RETRY_STATUSES
    return isinstance(exc, TRANSIENT)


def retry_after_s(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Retry-After as seconds (a number or an HTTP date), None when absent."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, HostFailure):
        return exc.reason
    return type(exc).__name__


def _attempts(
    client: httpx.Client,
    url: str,
    host: str,
    limits: FetchLimits,
    breakers: Breakers | None,
    retries: list[Retry],
    start: float,
    sleep: Callable[[float], None],
) -> _Answer:
    budget_end = start + limits.budget_s

    def attempt() -> _Answer:
        deadline = min(time.monotonic() + limits.timeout_s, budget_end + limits.timeout_s)
        if breakers is None:
            return _one(client, url, limits, deadline)
        return breakers.call(host, lambda: _one(client, url, limits, deadline))

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        backoff = min(MAX_BACKOFF_S, limits.backoff_base_s * 2 ** (state.attempt_number - 1))
        delay = random.uniform(0, backoff)  # full jitter
        if isinstance(exc, _StatusFailure):
            after = retry_after_s(exc.answer.headers)
            if after is not None:
                delay = max(delay, after)
        return delay

    def stop(state: RetryCallState) -> bool:
        if state.attempt_number >= limits.attempts:
            return True
        # Stop when the next wait would end past the budget.
        return time.monotonic() + (state.upcoming_sleep or 0) > budget_end

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        retries.append(
            Retry(
                state.attempt_number,
                _reason(exc) if exc else "?",
                round(state.upcoming_sleep, 3),
                host,
            )
        )

    retrying = Retrying(
        retry=retry_if_exception(_transient),
        wait=wait,
        stop=stop,
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
    try:
        return retrying(attempt)
    except _StatusFailure as exc:
        return exc.answer  # a 5xx/429 after the retries: the caller reports it


# -- the tool ------------------------------------------------------------------------------


def to_text(body: bytes, content_type: str, charset: str | None) -> str:
    """What the agent reads: Markdown for HTML, text as is, a note for binary."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind and not kind.startswith(TEXT_TYPES):
        return f"({len(body)} bytes of {kind}; not text, not shown)"
    text = body.decode(charset or "utf-8", errors="replace")
    if kind in ("text/html", "application/xhtml+xml") or (
        not kind and "<html" in text[:512].lower()
    ):
        text = markdownify(text, heading_style="ATX", strip=["img"])
        text = "\n".join(line.rstrip() for line in text.splitlines())
        while "\n\n\n" in text:
            text = text.replace("\n\n\n", "\n\n")
        text = text.strip()
    return text


_HEADERS = {
    "Accept-Encoding": "gzip, deflate",
    "Accept": "text/html,application/xhtml+xml,text/plain,application/json;q=0.9,*/*;q=0.5",
}


def fetch(
    url: str,
    net: NetworkRules,
    *,
    limits: FetchLimits = FetchLimits(),
    breakers: Breakers | None = None,
    sleep: Callable[[float], None] = time.sleep,
    secrets: tuple[str, ...] | None = None,
    convert: bool = True,
    transport: httpx.BaseTransport | None = None,
) -> FetchResult:
    """GET `url` under `net`'s egress rules; raises EgressDenied, CircuitOpen,
    FetchFailed or ToolTimeout (each a ToolError)."""
    start = time.monotonic()
    retries: list[Retry] = []
    redirects: list[str] = []
    with httpx.Client(
        transport=transport or egress_transport(net),
        trust_env=False,
        timeout=limits.timeout_s,
        follow_redirects=False,
        headers={"User-Agent": limits.user_agent, **_HEADERS},
    ) as client:
        hop = _Hop(client, net, limits, breakers, sleep, secrets, start, retries)
        current = url
        while True:
            answer = hop.get(current)
            location = answer.headers.get("location")
            if answer.status in REDIRECTS and location:
                if len(redirects) >= limits.max_redirects:
                    raise TooManyRedirects(
                        f"GET {url} redirected more than "
                        f"{limits.max_redirects} times (last to "
                        f"{location}); raise max_redirects if that is "
                        "expected"
                    )
                current = urljoin(current, location)
                redirects.append(current)
                continue
            break
    ctype = answer.headers.get("content-type", "")
    declared = answer.headers.get("content-length")
    result = FetchResult(
        status=answer.status,
        url=url,
        final_url=current,
        content_type=ctype,
        content_length=int(declared) if declared and declared.isdigit() else None,
        body_bytes=len(answer.body),
        truncated=answer.truncated,
        redirects=tuple(redirects),
        retries=tuple(retries),
        text=_decoded(answer.body, ctype, convert),
        duration_s=time.monotonic() - start,
        exit_code=0 if answer.status < 400 else answer.status,
    )
    if answer.status >= 400:
        raise FetchFailed(
            f"GET {current} answered HTTP {answer.status} (after {len(retries) + 1} attempt(s))",
            transient=answer.status in RETRY_STATUSES,
            result=result,
        )
    return result


@dataclass
class _Hop:
    """One GET of a fetch (a redirect is another), with its retries, and the
    transport's errors as ToolErrors that say what to do."""

    client: httpx.Client
    net: NetworkRules
    limits: FetchLimits
    breakers: Breakers | None
    sleep: Callable[[float], None]
    secrets: tuple[str, ...] | None
    start: float
    retries: list[Retry]

    def get(self, url: str) -> _Answer:
        host = check_url(url, self.net, secrets=self.secrets).hostname or ""
        tries = self.retries
        try:
            return _attempts(
                self.client, url, host, self.limits, self.breakers, tries, self.start, self.sleep
            )
        except (EgressDenied, CircuitOpen):
            raise
        except httpx.TimeoutException as exc:
            raise ToolTimeout(
                f"GET {url} timed out ({type(exc).__name__}) after "
                f"{len(tries) + 1} attempt(s) within "
                f"{time.monotonic() - self.start:.1f} s; the host is slow or "
                "down. Raise ORCH_FETCH_TIMEOUT_S if it is only slow"
            ) from None
        except TRANSIENT as exc:
            raise FetchFailed(
                f"GET {url} failed: {type(exc).__name__}: {exc} (after "
                f"{len(tries) + 1} attempt(s)); the host refused or "
                "dropped the connection",
                transient=True,
            ) from None


def _decoded(body: bytes, ctype: str, convert: bool) -> str:
    """The body as text in its declared charset (UTF-8 when unknown); HTML as
    Markdown when `convert`."""
    charset = None
    if "charset=" in ctype.lower():
        charset = ctype.lower().split("charset=", 1)[1].split(";")[0].strip().strip('"') or None
    try:
        return (
            to_text(body, ctype, charset)
            if convert
            else body.decode(charset or "utf-8", errors="replace")
        )
    except LookupError:
        return body.decode("utf-8", errors="replace")


def render(result: FetchResult, max_output_bytes: int) -> tuple[str, int]:
    """The call's output as recorded (header lines, then the text), capped;
    and its size before the cap."""
    meta = [f"status: {result.status}", f"url: {result.final_url}"]
    if result.redirects:
        meta.append(f"redirects: {len(result.redirects)} ({' -> '.join(result.redirects)})")
    meta.append(f"content-type: {result.content_type or '(none)'}")
    meta.append(
        f"bytes: {result.body_bytes}" + (" (truncated at the cap)" if result.truncated else "")
    )
    if result.retries:
        meta.append(f"retries: {len(result.retries)}")
    text = "\n".join(meta) + "\n\n" + result.text
    data = text.encode()
    if len(data) > max_output_bytes:
        text = data[:max_output_bytes].decode(errors="ignore") + "\n[output truncated]"
    return text, len(data)
