"""`orchestrator chat`: the command, composed from `orchestrator.agent.chat` (the
REPL) and `tasks/` (the queue), like the rest of the CLI in orchestrator.cli.main,
which calls `register` once its own commands are defined.

Not importing orchestrator.cli.main keeps `python -m orchestrator.cli.main` (which
runs that module as `__main__`) from loading it twice.
"""

from __future__ import annotations

import contextlib
import importlib
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Optional
from urllib.parse import urlsplit

import typer
from rich.console import Console

from orchestrator import lazy
from orchestrator.cli.root import current
from orchestrator.config.settings import Settings
from orchestrator.ops import workers
from orchestrator.service.dispatch import Dispatcher

if TYPE_CHECKING:
    from events.store import EventStore

# Heavy parts (SQLAlchemy, Alembic, the runner, the payload models) load in
# the commands that use them, not for `--help` (bench/cli_startup.py).
_replay = lazy.module("events.replay")


err = Console(stderr=True, soft_wrap=True)
# The runner and the payload models load when a chat starts, not for `--help`.
_workflows = lazy.module("orchestrator.service.workflows")
_chat = lazy.module("orchestrator.agent.chat")
_factory = lazy.module("orchestrator.agent.providers.factory")
_jobspec = lazy.module("orchestrator.run.jobspec")
_loop = lazy.module("orchestrator.agent.loop")
_policy = lazy.module("orchestrator.guard.policy")
_runner = lazy.module("orchestrator.run.runner")
_scripted = lazy.module("orchestrator.agent.providers.scripted")
OPENAI_URL = "https://api.openai.com/v1"
CONNECT_TIMEOUT_S = 3.0


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def chat(
    workspace: Path = typer.Option(
        Path("."),
        "--workspace",
        "-w",
        exists=True,
        file_okay=False,
        help="The folder the agent works in (default: cwd)",
    ),
    model: Optional[str] = typer.Option(
        None, "--model", help="Model name (default: ORCH_MODEL_NAME)"
    ),
    provider: Optional[str] = typer.Option(
        None,
        "--provider",
        help="scripted | openai (default: scripted with --script, else ORCH_MODEL_PROVIDER)",
    ),
    script: Optional[Path] = typer.Option(
        None, "--script", dir_okay=False, help="The scripted model's YAML turns"
    ),
    tier: Optional[str] = typer.Option(
        None, "--tier", help="read-only | read-write | exec: the highest tier the agent gets"
    ),
    policy: Optional[Path] = typer.Option(
        None,
        "--policy",
        exists=True,
        dir_okay=False,
        help="A policy YAML (docs/security.md) combined with the configured one",
    ),
    session: Optional[str] = typer.Option(
        None, "--session", help="Resume this chat session (its id) from its events"
    ),
    allow_destructive: bool = typer.Option(
        False,
        "--allow-destructive",
        help="Let destructive calls run without asking; recorded with your identity",
    ),
    keep_worker: bool = typer.Option(False, help="Leave a worker started here running"),
) -> None:
    """Talk to the agent in a terminal: each message is a turn of a recorded
    session (replay, pending and approve work on it). See docs/chat.md."""
    root = current()
    s = root.settings
    key = _factory.api_key(s)
    if session is not None:
        _refuse_with_resume(
            {
                "--model": model,
                "--provider": provider,
                "--script": script,
                "--tier": tier,
                "--policy": policy,
                "--allow-destructive": allow_destructive or None,
            }
        )
    else:  # bad input fails before anything is opened or recorded
        spec = _agent_spec(s, provider, model, script)
        docs = _policies(s, policy, tier)
    st = root.store(for_writing=True)
    runner = _runner.Runner(st, s.submitter, settings=s)
    if session is not None:
        ticket = _resumable(st, session, _chat.chat_ticket)
    else:
        ticket = _start(
            s, st, runner, key, workspace, spec, docs, tier or s.tier, allow_destructive
        )
    with workers.StartedWorker(root.ensure_worker(err), keep=keep_worker) as worker:
        _line_editing()
        backend = _backend(s, root.dispatcher, worker.proc)
        code = _repl(s, st, runner, backend, ticket, key).run(resumed=session is not None)
    raise typer.Exit(code)


def _line_editing() -> None:
    """Line editing and history for input(), in a terminal where readline exists."""
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            importlib.import_module("readline")


def _repl(
    s: Settings, st: EventStore, runner: Any, backend: Any, ticket: Any, key: str | None
) -> Any:
    """The REPL for a session, masking the model key in what it records."""
    return _chat.Chat(
        st,
        runner,
        backend,
        ticket,
        s.submitter,
        Console(soft_wrap=True),
        secrets=(key,) if key else (),
        store_content=s.prompt_storage == "masked",
    )


def _refuse_with_resume(options: dict[str, Any]) -> None:
    """A resumed chat keeps what it was started with: options that would
    change it are an error, not silently ignored."""
    given = [name for name, value in options.items() if value is not None]
    if given:
        _fail(
            f"--session resumes with the session's own model, tier and policy; drop "
            f"{', '.join(given)}",
            2,
        )


def _start(
    s: Settings,
    st: EventStore,
    runner: Any,
    key: str | None,
    workspace: Path,
    spec: Any,
    docs: list[Any],
    tier: str | None,
    allow_destructive: bool,
) -> Any:
    """Record a new chat session; its ticket. The loop is built only for its
    AgentStarted event: the worker runs the turns."""
    loop = _loop.AgentLoop(
        runner,
        _factory.providers_for(s),
        default_provider=s.model_provider,
        default_model=s.model_name,
        secrets=(key,) if key else (),
        store_content=s.prompt_storage == "masked",
    )
    return _chat.start_session(
        st,
        runner,
        loop.started,
        workspace.resolve(),
        spec,
        policy_files=docs,
        tier=tier,
        elevated_by=s.submitter if allow_destructive else None,
        actor=s.submitter,
    )


def _resumable(st: EventStore, session_id: str, chat_ticket: Any) -> Any:
    state = _replay.replay(st, session_id)
    if state.last_seq == 0:
        _fail(
            f"no session {session_id} in the event store; the id is printed when a chat "
            "starts (or see `orchestrator status JOB_ID`)",
            2,
        )
    a = state.session.agent
    if a is None or a.mode != "chat":
        _fail(
            f"session {session_id} is not a chat but a job's session; follow it with "
            f"`orchestrator status {state.session.job_id}`",
            2,
        )
    return chat_ticket(st, session_id)


def _agent_spec(s: Settings, provider: str | None, model: str | None, script: Path | None) -> Any:
    kind = provider or ("scripted" if script is not None else s.model_provider)
    if kind not in ("scripted", "openai"):
        _fail(f"--provider {kind!r}: use scripted or openai", 2)
    turns = None
    if kind == "scripted":
        path = script or s.model_script
        if path is None:
            _fail(
                "the scripted model needs its turns: pass --script FILE (a YAML list of "
                "assistant turns, see docs/chat.md), or use --provider openai",
                2,
            )
        if not path.is_file():
            _fail(
                f"--script {path}: no such file; give a YAML list of assistant turns "
                "(docs/chat.md)",
                2,
            )
        turns = tuple(_scripted.load_script(path))  # ConfigError (exit 2) says what is wrong
    elif script is not None:
        _fail("--script is for the scripted model; drop it, or use --provider scripted", 2)
    else:
        _check_endpoint(s.model_base_url or OPENAI_URL)
    return _jobspec.AgentSpec(
        instruction="",
        provider=kind,
        model=model,
        turns=turns,  # type: ignore[arg-type]
        max_turns=_chat.CHAT_MAX_TURNS,
    )


def _check_endpoint(url: str) -> None:
    """A model endpoint nobody listens on fails here, not minutes of retries later."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        _fail(
            f"the model endpoint {url} is not reachable ({exc.strerror or exc}); start it, "
            "or set ORCH_MODEL_BASE_URL (e.g. http://127.0.0.1:11434/v1 for Ollama), or "
            "chat offline with --script FILE",
            4,
        )


def _policies(s: Settings, policy_file: Path | None, tier: str | None) -> list[Any]:
    if tier is not None and tier not in _policy.TIERS:
        _fail(f"--tier {tier!r} is not a tier; use one of {', '.join(_policy.TIERS)}", 2)
    return [_policy.load_policy(f).doc for f in (policy_file, s.policy_file) if f is not None]


def _backend(s: Settings, dispatcher: Dispatcher, proc: Any) -> Any:
    def worker_problem() -> str | None:
        serving = s.embedded_broker and workers.embedded_worker_pid(s) is not None
        if proc is not None and proc.poll() is not None and not serving:
            # (One started here exits at once when another came up first.)
            return (
                f"the worker started for this chat exited (code {proc.returncode}); see "
                f"{workers.logfile(s)}, and start one with `orchestrator worker`"
            )
        if proc is None and s.embedded_broker and not serving:
            return "the worker of this state folder stopped; start one with `orchestrator worker`"
        return None

    # Remote control needs a broker with broadcast (Redis); the embedded one
    # has none: there the dispatcher's revoke does nothing and the chat kills
    # the task's process itself (it does on this host in any case, see Chat.cancel).
    return _chat.Backend(
        enqueue=dispatcher.start_agent,
        continue_after=lambda t, start, steps: _workflows.continue_session(
            dispatcher, t, start, steps
        ),
        revoke=dispatcher.revoke,
        worker_problem=worker_problem,
        on_end=lambda ticket: dispatcher.seal([ticket]),
    )
