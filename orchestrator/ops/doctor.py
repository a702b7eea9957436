"""`orchestrator doctor`: the installation's own diagnostics.

Each check is a small function of the settings that returns a `Result`:
status (`ok`, `warn`, `fail`, `skip`), whether it is required, what it found
and what to do about it. Checks only look: nothing is created, migrated or
started (the embedded store's file is not even opened when it does not
exist yet), network calls have short timeouts, and no secret is printed.

A required check that fails makes the command exit non-zero: 2 when the
configuration is what is wrong (settings, policy file, key, script), 4 when
a service cannot be reached (store, broker, model endpoint). The Celery
worker ping comes in as a function from the CLI (the composition root),
so this module does not import `tasks`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from orchestrator.config.settings import Settings
from orchestrator.errors import OrchestratorError
from orchestrator.ops import storage

__all__ = ["Result", "run_checks", "report", "render", "CHROMIUM_NAMES"]

Status = Literal["ok", "warn", "fail", "skip"]
CONNECT_TIMEOUT_S = 3.0
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/snap/bin/chromium")


@dataclass(frozen=True)
class Result:
    name: str
    status: Status
    required: bool
    detail: str
    remedy: str = ""
    exit_code: int = 0  # what a failure of this check makes the command exit with

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["exit_code"]
        return data


def _ok(name: str, required: bool, detail: str) -> Result:
    return Result(name, "ok", required, detail)


# -- the checks ----------------------------------------------------------------------


def check_config(load: Callable[[], Settings]) -> tuple[Result, Settings | None]:
    try:
        s = load()
    except OrchestratorError as exc:
        return Result(
            "config",
            "fail",
            True,
            str(exc),
            "fix the ORCH_* environment, .env or the ORCH_CONFIG file; every problem is listed",
            2,
        ), None
    where = (
        "embedded (SQLite files under " + str(s.state) + ")"
        if s.embedded_store and s.embedded_broker
        else "server"
    )
    return _ok(
        "config", True, f"settings valid; deployment {where}; model provider {s.model_provider}"
    ), s


def check_policy_file(s: Settings) -> Result:
    if s.policy_file is None:
        return Result(
            "policy-file",
            "skip",
            False,
            "no ORCH_POLICY_FILE: jobs run under their own policy and the built-in rules",
        )
    from orchestrator.guard.policy import load_policy

    try:
        pol = load_policy(s.policy_file)
    except OrchestratorError as exc:
        return Result(
            "policy-file",
            "fail",
            True,
            str(exc),
            f"fix {s.policy_file} (docs/security.md) or unset ORCH_POLICY_FILE",
            2,
        )
    rules = len(pol.doc.commands.rules) + len(pol.doc.paths)
    return _ok(
        "policy-file",
        True,
        f"{s.policy_file}: policy {pol.name!r}, tier {pol.doc.tier}, {rules} rule(s)",
    )


def check_store(s: Settings) -> Result:
    """Reachable, and at the schema revision this release knows."""
    import sqlalchemy as sa
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from events import migrate
    from events.db import display_url, normalize_url
    from events.errors import EventError

    url = s.effective_store_url
    shown = display_url(url if "://" in url else normalize_url(url))
    if s.embedded_store and not (s.state / "events.sqlite").exists():
        return _ok(
            "store", True, f"{shown}: not created yet; the first job creates and migrates it"
        )
    norm = normalize_url(url)
    full = storage.write_problem(norm)
    if full is not None:
        return Result(
            "store",
            "fail",
            True,
            f"{shown}: {full}: appends fail (reads still work)",
            "free space on that disk (or remount it read-write); workers go on by themselves",
            4,
        )
    args: dict[str, Any] = (
        {"connect_timeout": int(CONNECT_TIMEOUT_S)} if norm.startswith("postgresql") else {}
    )
    engine = sa.create_engine(norm, connect_args=args, poolclass=sa.pool.NullPool)
    try:
        found = migrate.current_revision(engine)
    except EventError as exc:
        cause = _cause(exc)
        remedy = (
            "create the database (e.g. `createdb NAME`), then `orchestrator db upgrade`"
            if "does not exist" in cause
            else "start the database and check "
            "ORCH_STORE_URL (host, port, database name, credentials)"
        )
        return Result("store", "fail", True, f"{shown}: cannot connect: {cause}", remedy, 4)
    finally:
        engine.dispose()
    head = migrate.head_revision()
    if found == head:
        return _ok("store", True, f"{shown}: reachable, schema at {head} (current)")
    cfg = Config()
    cfg.set_main_option("script_location", "events:migrations")
    known = {r.revision for r in ScriptDirectory.from_config(cfg).walk_revisions()}
    if found is not None and found not in known:
        return Result(
            "store",
            "fail",
            True,
            f"{shown}: schema at {found}, which this release does not know (newest here: {head})",
            "upgrade this installation: the database was migrated by a newer release",
            2,
        )
    if s.embedded_store:
        return Result(
            "store",
            "warn",
            True,
            f"{shown}: schema at {found or 'empty'}, head is "
            f"{head}; the embedded store migrates itself on the next job",
            "nothing to do, or `orchestrator db upgrade` now",
        )
    return Result(
        "store",
        "fail",
        True,
        f"{shown}: schema at {found or 'empty'}, this release needs {head}",
        "run `orchestrator db upgrade` (see runbooks for the upgrade order)",
        2,
    )


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__ or exc
    text = str(getattr(cause, "orig", None) or cause).strip().splitlines()
    return " ".join(line.strip() for line in text[:2])[:300]


def check_broker(s: Settings) -> Result:
    if s.embedded_broker:
        state = s.state
        parent = next((p for p in (state, *state.parents) if p.exists()), None)
        if parent is None or not os.access(parent, os.W_OK | os.X_OK):
            return Result(
                "broker",
                "fail",
                True,
                f"embedded SQLite broker: the state folder {state} cannot be created or written",
                "point ORCH_STATE_DIR at a folder this user can write",
                2,
            )
        db = state / "broker.sqlite"
        return _ok(
            "broker",
            True,
            f"embedded SQLite broker at {db}"
            + ("" if db.exists() else " (created by the first job)"),
        )
    urls = [s.broker_url or ""]
    if s.result_backend and s.result_backend != s.broker_url:
        urls.append(s.result_backend)
    for url in urls:
        problem = _ping(url)
        if problem is not None:
            what = "broker" if url == s.broker_url else "result backend"
            return Result(
                "broker",
                "fail",
                True,
                f"{what} {_hide(url)}: {problem}",
                "start the broker (Redis) or fix ORCH_BROKER_URL / ORCH_RESULT_BACKEND",
                4,
            )
    shown = ", ".join(_hide(u) for u in urls) + ": reachable"
    if (s.broker_url or "").startswith(("redis://", "rediss://")):
        aof = _redis_appendonly(s.broker_url or "")
        if aof != "yes":
            return Result(
                "broker",
                "warn",
                True,
                f"{shown}, but Redis does not persist its queue (appendonly {aof}): a "
                "restart loses every queued step and leaves their jobs stalled",
                "turn on AOF: `appendonly yes` in redis.conf (or CONFIG SET appendonly "
                "yes; CONFIG REWRITE), docs/deployment.md; `orchestrator resume JOB` "
                "re-enqueues a job it lost",
            )
        shown += " (AOF persistence on)"
    elif (s.broker_url or "").startswith(("amqp://", "amqps://", "pyamqp://")):
        shown += " (RabbitMQ: durable queues survive a restart)"
    return _ok("broker", True, shown)


def _redis_appendonly(url: str) -> str:
    """Redis's `appendonly` setting ("yes", "no"), or why it could not be read."""
    import redis

    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S
        )
        found = client.config_get("appendonly").get("appendonly", "unknown")
        client.close()
    except redis.RedisError as exc:  # CONFIG may be renamed or denied (managed Redis)
        return f"unknown: CONFIG GET refused ({exc})"
    return found.decode() if isinstance(found, bytes) else str(found)


def _ping(url: str) -> str | None:
    """None when the server answers, else why not."""
    if url.startswith(("redis://", "rediss://")):
        import redis

        try:
            client = redis.Redis.from_url(
                url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S
            )
            client.ping()
            client.close()
        except redis.RedisError as exc:
            return f"no answer to PING ({exc})"
        return None
    if url.startswith(("db+", "sqlite", "orchsqla")):
        return None  # a database file or SQL backend: nothing to ping
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # noqa: BLE001  (kombu raises per transport)
        return f"cannot connect ({exc})"
    return None


def _hide(url: str) -> str:
    """A URL without its password."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (
        f":{parts.port}" if parts.port else ""
    )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def check_worker(s: Settings, ping: Callable[[], list[object]] | None) -> Result:
    from orchestrator.ops import workers

    if s.embedded_broker:
        pid = workers.embedded_worker_pid(s)
        if pid is not None:
            return _ok(
                "worker", False, f"embedded worker running (pid {pid}, log {workers.logfile(s)})"
            )
        return Result(
            "worker",
            "warn",
            False,
            "no worker running; `orchestrator run` and `diagnose` start one for their job",
            "nothing to do, or keep one running: `orchestrator worker`",
        )
    if ping is None:
        return Result(
            "worker", "skip", False, "the broker is not reachable, so no worker can be asked"
        )
    try:
        answers = ping()
    except Exception as exc:  # noqa: BLE001
        answers, why = [], f" ({exc})"
    else:
        why = ""
    if answers:
        names = sorted(str(next(iter(a))) if isinstance(a, dict) else str(a) for a in answers)
        return _ok("worker", False, f"{len(names)} worker(s) answered: {', '.join(names)}")
    return Result(
        "worker",
        "warn",
        False,
        f"no worker answered a ping within 1 s{why}",
        "start workers (`orchestrator worker`, or the systemd/helm units); "
        "`orchestrator run` starts one for its own job",
    )


def check_sandbox(sandbox_report: dict[str, Any]) -> Result:
    bw, cg = sandbox_report["bwrap"], sandbox_report["cgroups"]
    parts = [
        f"runs as {sandbox_report['runs_as']}",
        f"cgroups {cg['version'] if cg['usable'] else 'not usable'}",
    ]
    if sandbox_report["mode"] == "bwrap":
        return _ok(
            "sandbox", False, f"{bw['version'] or 'bubblewrap'} ({bw['path']}); " + "; ".join(parts)
        )
    if bw.get("problem"):
        return Result(
            "sandbox",
            "warn",
            False,
            f"fallback: bubblewrap is installed but "
            f"cannot start ({bw['problem']}); " + "; ".join(parts),
            "allow user namespaces for this container or host (the compose "
            "bwrap override, the Helm worker.sandbox.bubblewrap switch; "
            "docs/deployment.md), or accept the fallback",
        )
    return Result(
        "sandbox",
        "warn",
        False,
        "fallback (rlimits and a process group): "
        + "; ".join(parts)
        + "; workspace files the policy denies are not hidden",
        "install bubblewrap (apt-get install bubblewrap) for namespaces, a "
        "read-only system and hidden secrets; see docs/security.md",
    )


# What runs in production outside the runtime dependencies: the named extras
# of pyproject.toml (the image, compose, Helm and `make install` install them),
# by the module each one brings.
EXTRAS = {"browser": "playwright", "vault": "hvac", "keyring": "keyring"}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _missing_extra(extra: str, present: Callable[[str], bool]) -> tuple[str, str] | None:
    """(what is missing, the remedy) when extra's module is not importable."""
    module = EXTRAS[extra]
    if present(module):
        return None
    return (
        f"the Python package {module} is not installed (the `{extra}` extra)",
        f"pip install 'agent-orchestrator[{extra}]' (the image installs it)",
    )


def check_secret_sources(s: Settings, present: Callable[[str], bool] = installed) -> Result:
    """The packages the configured secret sources need (vault: hvac, keyring:
    keyring): without them every secret read from there fails at run time."""
    wanted = [src for src in s.secret_sources if src in EXTRAS]
    missing = [m for m in (_missing_extra(src, present) for src in wanted) if m is not None]
    if missing:
        return Result(
            "secret-sources",
            "fail",
            True,
            "secret_sources lists " + "; ".join(what for what, _ in missing),
            "; ".join(fix for _, fix in missing) + ", or drop it from ORCH_SECRET_SOURCES",
            exit_code=2,
        )
    return _ok("secret-sources", False, ", ".join(s.secret_sources) or "none")


def check_chromium(
    which: Callable[[str], str | None] = shutil.which,
    exists: Callable[[str], bool] | None = None,
    s: Settings | None = None,
    installed: Callable[[str], bool] = installed,
) -> Result:
    """With settings, also the browser pools of the workers under state_dir
    (orchestrator.tools.web.browser_pool) and any browser left behind by a dead
    worker. Chromium without Playwright's package (the `browser` extra) is a
    warning: the browser tool cannot drive it."""
    exists = exists or os.path.exists
    found = next((p for p in map(which, CHROMIUM_NAMES) if p), None) or next(
        (p for p in CHROMIUM_PATHS if exists(p)), None
    )
    if found:
        detail = f"found at {found} (for the browser tool)"
        missing = _missing_extra("browser", installed)
        if missing is not None:
            return Result("chromium", "warn", False, f"{detail}, but {missing[0]}", missing[1])
        if s is not None:
            from orchestrator.tools.web import browser_pool

            pools, left = browser_pool.describe(s.state)
            detail += f"; {pools}"
            if left:
                return Result(
                    "chromium",
                    "warn",
                    False,
                    detail,
                    "a worker died without "
                    "closing its browsers; the next worker start kills them, or "
                    "kill the processes carrying ORCH_BROWSER_OWNER now",
                )
        return _ok("chromium", False, detail)
    return Result(
        "chromium",
        "warn",
        False,
        "no Chromium on PATH or at /usr/bin/chromium; only the browser tool needs it",
        "apt-get install chromium, if jobs scrape pages with the browser tool",
    )


def check_model_endpoint(s: Settings, timeout_s: float = 5.0) -> Result:
    if s.model_provider != "openai":
        return Result(
            "model-endpoint",
            "skip",
            False,
            f"model provider is {s.model_provider}: no endpoint to reach",
        )
    from orchestrator.agent.providers.factory import api_key

    try:
        key = api_key(s)
    except OrchestratorError as exc:
        return Result(
            "model-endpoint",
            "fail",
            True,
            str(exc),
            "fix ORCH_MODEL_API_KEY_FILE or set ORCH_MODEL_API_KEY",
            2,
        )
    base = (s.model_base_url or "https://api.openai.com/v1").rstrip("/")
    url = f"{base}/models"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if key:
        request.add_header("Authorization", f"Bearer {key}")  # sent, never printed
    shown = _hide(url)
    try:
        with urllib.request.urlopen(request, timeout=min(timeout_s, s.model_timeout_s)) as r:
            body = r.read(1_000_000)
    except urllib.error.HTTPError as exc:
        return _http_failure(shown, exc)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Result(
            "model-endpoint",
            "fail",
            True,
            f"GET {shown}: cannot connect ({reason})",
            "start the model server or fix ORCH_MODEL_BASE_URL",
            4,
        )
    return _model_list(s, shown, body)


def _http_failure(shown: str, exc: urllib.error.HTTPError) -> Result:
    """An HTTP error from GET /models: a refused key, a server without the
    model list (404, may still chat), or a failing endpoint."""
    if exc.code in (401, 403):
        return Result(
            "model-endpoint",
            "fail",
            True,
            f"GET {shown}: HTTP {exc.code}, the endpoint refused the key",
            "check ORCH_MODEL_API_KEY (or its file) and that the key may use this endpoint",
            2,
        )
    if exc.code == 404:
        return Result(
            "model-endpoint",
            "warn",
            True,
            f"GET {shown}: HTTP 404; the server "
            "answers but lists no models (some servers do not), chat "
            "completions may still work",
            "check ORCH_MODEL_BASE_URL ends with the API's root, e.g. http://127.0.0.1:11434/v1",
        )
    return Result(
        "model-endpoint",
        "fail",
        True,
        f"GET {shown}: HTTP {exc.code}",
        "the endpoint is up but failing; check its logs",
        4,
    )


def _model_list(s: Settings, shown: str, body: bytes) -> Result:
    """What GET /models answered: whether the configured model is among them."""
    try:
        ids = [m.get("id") for m in json.loads(body).get("data", []) if isinstance(m, dict)]
    except (ValueError, AttributeError):
        return Result(
            "model-endpoint",
            "warn",
            True,
            f"GET {shown}: answered, but not with a model list",
            "check ORCH_MODEL_BASE_URL points at an OpenAI-compatible API root",
        )
    if s.model_name in ids:
        return _ok(
            "model-endpoint", True, f"GET {shown}: {len(ids)} model(s), {s.model_name!r} among them"
        )
    return Result(
        "model-endpoint",
        "warn",
        True,
        f"GET {shown}: {len(ids)} model(s), but not {s.model_name!r}",
        "set ORCH_MODEL_NAME to one the endpoint serves",
    )


def check_model_script(s: Settings) -> Result:
    if s.model_script is None:
        return Result(
            "model-script",
            "skip",
            False,
            "no ORCH_MODEL_SCRIPT: scripted agent jobs bring their own turns (`agent.script`)",
        )
    from orchestrator.agent.providers.scripted import load_script

    try:
        turns = load_script(s.model_script)
    except OrchestratorError as exc:
        return Result(
            "model-script", "fail", True, str(exc), "fix the file or unset ORCH_MODEL_SCRIPT", 2
        )
    return _ok("model-script", True, f"{s.model_script}: {len(turns)} turn(s)")


# -- all of them ---------------------------------------------------------------------


def run_checks(
    load: Callable[[], Settings],
    *,
    sandbox_report: dict[str, Any],
    ping: Callable[[], list[object]] | None = None,
) -> list[Result]:
    """Every check, in order; with invalid settings the rest are skipped."""
    config, s = check_config(load)
    if s is None:

        def skipped(name: str) -> Result:
            return Result(name, "skip", False, "the configuration is invalid")

        return [
            config,
            skipped("policy-file"),
            skipped("store"),
            skipped("broker"),
            skipped("worker"),
            check_sandbox(sandbox_report),
            check_chromium(),
            skipped("model-endpoint"),
            skipped("model-script"),
            skipped("secret-sources"),
        ]
    broker = check_broker(s)
    return [
        config,
        check_policy_file(s),
        check_store(s),
        broker,
        check_worker(s, ping if broker.status in ("ok", "warn") else None),
        check_sandbox(sandbox_report),
        check_chromium(s=s),
        check_model_endpoint(s),
        check_model_script(s),
        check_secret_sources(s),
    ]


def exit_code(results: Sequence[Result]) -> int:
    """The first failed required check's code (configuration before services)."""
    return next((r.exit_code or 1 for r in results if r.required and r.status == "fail"), 0)


def report(results: Sequence[Result], sandbox_report: dict[str, Any]) -> dict[str, Any]:
    code = exit_code(results)
    return {
        "ok": code == 0,
        "exit_code": code,
        "checks": [r.to_json() for r in results],
        "sandbox": sandbox_report,
    }


_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def render(console: Console, data: dict[str, Any]) -> None:
    """The checks as a table, then the sandbox in detail (what it contains
    and what it does not)."""
    table = Table(show_edge=False, title="orchestrator doctor", title_justify="left")
    for col in ("check", "status", "detail", "remedy"):
        table.add_column(col, overflow="fold")
    for c in data["checks"]:
        status = f"[{_STYLE[c['status']]}]{c['status']}[/]" + (
            "" if c["required"] else " [dim](optional)[/]"
        )
        table.add_row(c["name"], status, c["detail"], c["remedy"])
    console.print(table)
    sb = data["sandbox"]
    bw, sp, cg = sb["bwrap"], sb["setpriv"], sb["cgroups"]
    mode = (
        "bubblewrap"
        if sb["mode"] == "bwrap"
        else "fallback (rlimits and a process group; bubblewrap is not installed)"
    )
    console.print(f"sandbox: {mode}", highlight=False)
    console.print(
        f"  bwrap:   {bw['version'] or 'not installed'}"
        f"{' (' + bw['path'] + ')' if bw['path'] else ''}",
        highlight=False,
    )
    console.print(f"  setpriv: {sp['version'] or 'not installed'}", highlight=False)
    console.print(f"  runs as: {sb['runs_as']}", highlight=False)
    view = sb["view"]
    why = f" ({view['overlay_problem']})" if view["overlay_problem"] else ""
    console.print(f"  view:    {view['kind']}{why}: {view['guarantee']}", highlight=False)
    console.print(
        f"  cgroups: {'usable' if cg['usable'] else 'not usable'}: {cg['detail']}", highlight=False
    )
    console.print("protects against:", highlight=False)
    for line in sb["protects_against"]:
        console.print(f"  + {line}", highlight=False)
    console.print("does not protect against:", highlight=False)
    for line in sb["does_not_protect_against"]:
        console.print(f"  - {line}", highlight=False)
    verdict = (
        "[green]all required checks pass[/]"
        if data["ok"]
        else f"[bold red]a required check failed (exit {data['exit_code']})[/]"
    )
    console.print(verdict, highlight=False)
