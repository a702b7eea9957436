"""`orchestrator chat` driven as a person would, in a pseudo-terminal: a real
CLI process, a real embedded worker, the scripted model (tests/chat_scripts),
and the event log read back afterwards."""

from __future__ import annotations

import getpass
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from events import payloads as p
from events.envelope import Event
from events.history import history
from events.projections import Projections
from events.replay import replay
from events.store import SqlEventStore, open_store
from orchestrator.agent import core as agent
from orchestrator.config.settings import Settings
from orchestrator.ops import workers
from orchestrator.run.runner import job_state
from orchestrator.run.sample_repos import create_sample_repos
from tests.cli_helpers import cli, shape_env, state_store
from tests.conftest import redis_db_url
from tests.processes import alive, dies_with_us, running

REDIS_DB = 9

SCRIPTS = Path(__file__).parent / "chat_scripts"
PROMPT = "you> "
USER = f"user:{getpass.getuser()}"
SLEEP = "sleep\x0029.123"  # the scripted shell call's argv, as /proc shows it
KEY = "sk-proj-" + "a1B2" * 8  # looks like an API key: masked before it is recorded

pytestmark = pytest.mark.slow


# -- helpers --------------------------------------------------------------------------


def chat(env: dict[str, str], cwd: Path, *args: str, sigint_ignored: bool = False) -> pexpect.spawn:
    """`sigint_ignored`: the chat starts with SIGINT ignored, as from a shell's
    `&` without job control; its Ctrl-C must work all the same."""
    child = pexpect.spawn(
        sys.executable,
        ["-m", "orchestrator.cli.main", "chat", *args],
        cwd=str(cwd),
        env=env,
        encoding="utf-8",
        timeout=120,  # each expect; a loaded machine starts the CLI slowly
        dimensions=(50, 250),
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        if sigint_ignored
        else None,
    )
    child.logfile_read = io.StringIO()  # the whole transcript, for failures
    return child


def session_id(child: pexpect.spawn) -> str:
    child.expect(r"chat session (\S+) in ")
    return str(child.match.group(1))


def said(child: pexpect.spawn, command: str) -> str:
    """What the chat printed in answer to one line."""
    child.sendline(command)
    child.expect(PROMPT)
    return str(child.before)


def ended(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    return int(child.exitstatus)


def store_of(env: dict[str, str]) -> SqlEventStore:
    return state_store(env)  # type: ignore[no-any-return]


def events(env: dict[str, str], sid: str) -> list[Event]:
    st = store_of(env)
    try:
        return list(st.read_stream(sid))
    finally:
        st.close()


def state(env: dict[str, str], sid: str) -> Projections:
    st = store_of(env)
    try:
        return history(st, sid)  # the whole of it: files, conversation
    finally:
        st.close()


def job_status(env: dict[str, str], sid: str) -> str:
    st = store_of(env)
    try:
        return job_state(st, replay(st, sid).session.job_id).status
    finally:
        st.close()


def _flat(text: str) -> str:
    return " ".join(text.split())


def repo(tmp_path: Path) -> Path:
    [made] = create_sample_repos(tmp_path / "sample-repos", count=1)
    return made


def until(condition, what: str, limit_s: float = 20.0) -> None:
    """Wait for a condition (a guard against hanging, not a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def children() -> Iterator[list[pexpect.spawn]]:
    """Chats a test spawned; one still running at the end gets the hangup a
    closed terminal sends (it detaches and stops a worker it started)."""
    spawned: list[pexpect.spawn] = []
    yield spawned
    for child in spawned:
        if child.isalive():
            child.kill(signal.SIGHUP)
            child.expect(pexpect.EOF, timeout=60)
        child.close(force=True)
        print(child.logfile_read.getvalue())  # shown when the test failed


class _Worker:
    """A worker process started for chats to share (each would otherwise
    start and stop its own), killed at the end."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.settings = Settings(
            state_dir=Path(env["ORCH_STATE_DIR"]), broker_url=env.get("ORCH_BROKER_URL")
        )
        self.settings.state.mkdir(parents=True, exist_ok=True)
        open_store(self.settings.effective_store_url, upgrade=True).close()
        log = open(workers.logfile(self.settings), "ab")
        # As workers.start_worker does, with the test's environment.
        self.proc = subprocess.Popen(
            workers.worker_command(self.settings),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            preexec_fn=dies_with_us(),
        )
        log.close()

    def ready(self) -> dict[str, str]:
        """Its env, once it is up: a chat then finds it instead of starting its own."""
        until(
            lambda: b" ready." in workers.logfile(self.settings).read_bytes(),
            "the shared worker to be ready",
            limit_s=60,
        )
        return self.env

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        until(lambda: not alive(self.proc.pid), "the shared worker to go")


def _with_worker(env: dict[str, str]) -> Iterator[dict[str, str]]:
    worker = _Worker(env)
    try:
        yield worker.ready()
    finally:
        worker.kill()


@pytest.fixture(scope="module", autouse=True)
def _embedded_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Worker]:
    """Started with the module, so it boots while the first test runs."""
    worker = _Worker(shape_env(tmp_path_factory.mktemp("chat"), TERM="dumb"))
    try:
        yield worker
    finally:
        worker.kill()


@pytest.fixture
def shared(_embedded_worker: _Worker) -> dict[str, str]:
    """The state folder of the module's embedded worker."""
    return _embedded_worker.ready()


@pytest.fixture(scope="module")
def shared_redis(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[dict[str, str]]:
    """The same on a Redis broker (db 9, this file's own), where Ctrl-C also
    revokes the task through Celery's remote control."""
    import redis

    url = redis_db_url(REDIS_DB)
    redis.Redis.from_url(url).flushdb()
    yield from _with_worker(
        shape_env(tmp_path_factory.mktemp("chat-redis"), broker_url=url, TERM="dumb")
    )


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def any_broker(request: pytest.FixtureRequest) -> dict[str, str]:
    return request.getfixturevalue("shared" if request.param == "embedded" else "shared_redis")


# -- a conversation ---------------------------------------------------------------------


def test_a_chat_reads_a_file_answers_and_reports_status_quota_and_pending(
    tmp_path: Path, children: list[pexpect.spawn]
) -> None:
    env = shape_env(tmp_path, TERM="dumb")  # no worker runs: the chat starts one
    child = chat(env, repo(tmp_path), "--script", str(SCRIPTS / "reads.yaml"))
    children.append(child)
    sid = session_id(child)
    child.expect(PROMPT)
    answer = said(child, f"what does the README say? (my key: {KEY})")
    assert "→ read README.md" in answer
    assert "Invoices for the example users." in answer  # the tool's output
    assert "agent> The README says: invoices for the example users." in answer

    status = said(child, "/status")
    assert f"session {sid} (running)" in status
    assert "2 model turn(s), 1 tool call(s)" in status and "files changed: none" in status
    quota = said(child, "/quota")
    assert "tool calls: read 1" in quota and "2 model call(s)" in quota
    tokens_in, tokens_out = map(int, re.search(r"tokens: (\d+) in, (\d+) out", quota).groups())
    pending = said(child, "/pending")
    assert "no confirmations are waiting" in pending

    child.sendline("/exit")
    assert ended(child) == 0
    transcript = child.logfile_read.getvalue()
    assert f"session {sid} completed" in transcript

    s = state(env, sid)
    assert s.session.status == "completed" and s.session.agent.mode == "chat"
    assert (s.quota.tokens_in, s.quota.tokens_out) == (tokens_in, tokens_out)
    log = events(env, sid)
    kinds = [e.type for e in log]
    assert kinds[:4] == ["SessionStarted", "PolicyAttached", "AgentStarted", "UserMessage"]
    assert log[3].payload.text == "what does the README say? (my key: ***)"
    assert kinds[-1] == "SessionCompleted"
    assert job_status(env, sid) == "completed"
    # The worker the chat started for itself is gone with it.
    assert workers.embedded_worker_pid(Settings(state_dir=Path(env["ORCH_STATE_DIR"]))) is None


# -- confirmations ---------------------------------------------------------------------


def test_a_delete_allowed_at_the_prompt_runs_and_the_log_names_who_allowed_it(
    tmp_path: Path, shared: dict[str, str], children: list[pexpect.spawn]
) -> None:
    ws = repo(tmp_path)
    (ws / "obsolete.txt").write_text("old\n")
    child = chat(shared, ws, "--script", str(SCRIPTS / "deletes.yaml"))
    children.append(child)
    sid = session_id(child)
    child.expect(PROMPT)
    child.sendline("clean up")
    child.expect(r"Allow delete obsolete\.txt\? \[y/n/details\] ")
    child.sendline("details")
    child.expect(r"Allow delete obsolete\.txt\? \[y/n/details\] ")
    assert "rule destructive-delete" in child.before and '"path": "obsolete.txt"' in child.before
    child.sendline("y")
    child.expect(PROMPT)
    assert f"allowed by {USER}" in child.before
    assert "agent> Done with the obsolete file." in child.before
    assert not (ws / "obsolete.txt").exists()
    assert "obsolete.txt (deleted)" in said(child, "/status")
    child.sendline("/exit")
    assert ended(child) == 0

    s = state(shared, sid)
    [granted] = [e for e in events(shared, sid) if isinstance(e.payload, p.ConfirmationGranted)]
    assert granted.payload.by == USER and granted.actor == USER
    [entry] = s.ledger.entries
    assert (entry.tool, entry.decision, entry.confirmation, entry.confirmed_by) == (
        "delete",
        "ask",
        "granted",
        USER,
    )
    assert [c.path for c in s.session.files_changed] == ["obsolete.txt"]


def test_a_delete_refused_at_the_prompt_changes_nothing_and_the_model_is_told(
    tmp_path: Path, shared: dict[str, str], children: list[pexpect.spawn]
) -> None:
    ws = repo(tmp_path)
    (ws / "obsolete.txt").write_text("old\n")
    child = chat(shared, ws, "--script", str(SCRIPTS / "deletes.yaml"))
    children.append(child)
    sid = session_id(child)
    child.expect(PROMPT)
    child.sendline("clean up")
    child.expect(r"Allow delete obsolete\.txt\? \[y/n/details\] ")
    child.sendline("n keep it for now")
    child.expect(PROMPT)
    assert f"refused by {USER}: keep it for now" in child.before
    assert (ws / "obsolete.txt").read_text() == "old\n"
    child.sendeof()  # Ctrl-D ends the chat like /exit
    assert ended(child) == 0

    s = state(shared, sid)
    assert s.session.status == "completed" and not s.session.files_changed
    [entry] = s.ledger.entries
    assert (entry.confirmation, entry.confirmed_by) == ("denied", USER)
    told = [m["content"] for m in agent.messages(s, False) if m["role"] == "tool"]
    assert told == [
        f"denied by {USER} when asked (rule destructive-delete: deleting a file): "
        "keep it for now. Nothing ran."
    ]
    assert s.session.agent.model_turns == 2  # and it answered after reading that


# -- resuming -----------------------------------------------------------------------------


def test_a_detached_chat_resumes_with_its_conversation_and_goes_on(
    tmp_path: Path, shared: dict[str, str], children: list[pexpect.spawn]
) -> None:
    ws = repo(tmp_path)
    first = chat(shared, ws, "--script", str(SCRIPTS / "reads.yaml"))
    children.append(first)
    sid = session_id(first)
    first.expect(PROMPT)
    said(first, "what does the README say?")
    first.sendline("/detach")
    assert ended(first) == 0
    assert state(shared, sid).session.status == "running"

    second = chat(shared, ws, "--session", sid)
    children.append(second)
    assert session_id(second) == sid
    second.expect(r"agent> The README says: invoices for the example users\.\r?\n")
    assert "you> what does the README say?" in second.before
    assert "→ read README.md (completed)" in second.before
    second.expect(PROMPT)
    assert "agent> You asked again: the README is still about billing." in said(second, "and now?")
    second.sendline("/exit")
    assert ended(second) == 0
    s = state(shared, sid)
    assert s.session.status == "completed"
    assert [e.role for e in s.session.agent.entries] == [
        "user",
        "assistant",
        "assistant",
        "user",
        "assistant",
    ]


# -- Ctrl-C ---------------------------------------------------------------------------------


def test_ctrl_c_cancels_a_running_command_and_leaves_no_process_behind(
    tmp_path: Path, any_broker: dict[str, str], children: list[pexpect.spawn]
) -> None:
    shared = any_broker
    assert not running(SLEEP), "a sleep 29.123 from elsewhere would confuse this test"
    child = chat(
        shared,
        repo(tmp_path),
        "--script",
        str(SCRIPTS / "sleeps.yaml"),
        "--tier",
        "exec",
        sigint_ignored=True,  # the harder case: the default handler comes from the chat
    )
    children.append(child)
    sid = session_id(child)
    child.expect(PROMPT)
    child.sendline("run the slow command")
    child.expect("→ shell sleep 29.123")
    until(lambda: running(SLEEP), "the command to start")
    child.sendintr()
    child.expect(PROMPT)
    assert "turn 1 cancelled" in child.before
    until(lambda: not running(SLEEP), "the command to be gone", limit_s=10)

    log = events(shared, sid)
    [cancelled] = [e for e in log if isinstance(e.payload, p.AgentTurnCancelled)]
    assert (cancelled.payload.model_turn, cancelled.payload.by) == (1, USER)
    [failed] = [e for e in log if isinstance(e.payload, p.ToolCallFailed)]
    assert (failed.payload.tool, failed.payload.error) == ("shell", "Cancelled")
    assert not any(isinstance(e.payload, p.ToolCallCompleted) for e in log)
    brief = said(child, "/replay")
    assert re.search(r"AgentTurnCancelled\s+" + re.escape(USER) + " turn 1", brief)

    child.sendintr()  # Ctrl-C at the prompt ends the chat
    assert ended(child) == 0
    assert state(shared, sid).session.status == "completed"
    assert job_status(shared, sid) == "completed"


# -- what goes wrong, in one line -------------------------------------------------------------


def test_a_missing_script_a_dead_endpoint_or_an_unknown_session_is_one_line_saying_what_to_do(
    tmp_path: Path,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    env = shape_env(tmp_path)
    runs = {
        "missing": (env, "chat", "--script", str(tmp_path / "nope.yaml")),
        "down": (
            {**env, "ORCH_MODEL_BASE_URL": "http://127.0.0.1:9/v1"},
            "chat",
            "--provider",
            "openai",
        ),
        "unknown": (env, "chat", "--session", "no-such-session"),
    }
    with ThreadPoolExecutor(len(runs)) as pool:
        done = {k: pool.submit(cli, *args, cwd=tmp_path) for k, args in runs.items()}
    missing, down, unknown = (done[k].result() for k in runs)
    assert missing.returncode == 2
    assert "no such file; give a YAML list of assistant turns" in _flat(missing.stderr)
    assert down.returncode == 4
    assert "the model endpoint http://127.0.0.1:9/v1 is not reachable" in _flat(down.stderr)
    assert unknown.returncode == 2 and "no session no-such-session" in _flat(unknown.stderr)
    for result in (missing, down, unknown):
        assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    # Refused input records nothing (the one store opened is the unknown session's look-up).
    st = store_of(env)
    try:
        assert list(st.read_all()) == []
    finally:
        st.close()


# -- the pure parts, on real folded events ------------------------------------------------


def _folded(*payloads: object) -> Projections:
    from events.projections import fold
    from tests.factories import place

    return fold(place("s-1", list(payloads)), Projections())


_START = [
    p.SessionStarted(job_id="j", target="/w", steps=()),
    p.PolicyAttached(name="default", hash="h" * 64, document={}, tier="exec"),
    p.AgentStarted(
        instruction="",
        instruction_digest="d",
        mode="chat",
        provider="scripted",
        model="scripted",
        max_turns=10,
        max_invalid_calls=1,
        prompt_version="v",
        tools=("read", "shell"),
    ),
    p.UserMessage(text="run it", digest="d"),
]
_ASKED = p.ModelRequested(
    model_turn=1, provider="scripted", model="scripted", messages=2, prompt_digest="x"
)
_ANSWERED = p.ModelResponded(
    model_turn=1,
    model="scripted",
    latency_s=0.0,
    finish_reason="tool_calls",
    tool_calls=(
        p.ModelToolCall(id="c1", name="shell", arguments='{"command": "sleep 9"}', turn=1),
    ),
)
_STARTED = [
    p.TurnStarted(turn=1, name="shell", kind="shell"),
    p.ToolCallRequested(
        call_id="s-1/1", turn=1, tool="shell", args={"command": ["sleep", "9"], "cwd": "."}
    ),
    p.PermissionDecided(
        call_id="s-1/1", decision="allow", rule_id="tier-exec", policy_hash="h" * 64
    ),
    p.ToolCallStarted(call_id="s-1/1"),
]


def test_ctrl_c_cancels_the_turn_in_flight_whatever_it_is_doing() -> None:
    from orchestrator.agent.chat import in_flight_turn, in_flight_units, phase
    from tests.factories import place

    assert (in_flight_turn(_folded(*_START)), phase(_folded(*_START))) == (1, "busy")
    assert in_flight_turn(_folded(*_START, _ASKED)) == 1  # the model is thinking
    running = [*_START, _ASKED, _ANSWERED, *_STARTED]
    assert in_flight_turn(_folded(*running)) == 1  # its command runs
    before = _folded(*running)
    after = _folded(*running, p.AgentTurnCancelled(model_turn=1, by="user:a"))
    assert phase(after) == "idle"
    [unit] = in_flight_units(place("s-1", running), before, after)
    assert unit.type == "ToolCallStarted"
    thinking = [*_START, _ASKED]
    [unit] = in_flight_units(
        place("s-1", thinking),
        _folded(*thinking),
        _folded(*thinking, p.AgentTurnCancelled(model_turn=1, by="u")),
    )
    assert unit.type == "ModelRequested"


def test_a_refused_call_settles_once_its_turn_is_recorded_and_the_model_hears_why() -> None:
    from orchestrator.agent.chat import phase

    asked = [
        *_START,
        _ASKED,
        _ANSWERED,
        *_STARTED[:2],
        p.PermissionDecided(
            call_id="s-1/1", decision="ask", rule_id="destructive", policy_hash="h" * 64
        ),
        p.ConfirmationRequested(
            call_id="s-1/1", turn=1, tool="shell", rule_id="destructive", reason="deletes files"
        ),
    ]
    assert phase(_folded(*asked)) == "waiting"
    denied = [*asked, p.ConfirmationDenied(call_id="s-1/1", by="user:a", reason="no")]
    assert agent.next_action(_folded(*denied)).kind == "tool"  # the runner records it
    done = _folded(*denied, p.TurnCompleted(turn=1, status="failed"))
    assert agent.next_action(done).kind == "model"
    assert agent.messages(done, False)[-1]["content"] == (
        "denied by user:a when asked (rule destructive: deletes files): no. Nothing ran."
    )


def test_a_persons_answers_and_a_calls_arguments_read_as_written() -> None:
    from orchestrator.agent.chat_view import args_summary, parse_answer

    assert parse_answer(" Y ") == ("y", "")
    assert parse_answer("n not that file") == ("n", "not that file")
    assert parse_answer("details") == ("details", "")
    assert parse_answer("maybe") == (None, "")
    assert (
        args_summary("shell", {"command": ["git", "commit", "-m", "a b"], "cwd": "."})
        == "git commit -m 'a b'"
    )
    assert (
        args_summary("replace", {"pattern": "old", "replacement": "new", "glob": ["*.py"]})
        == "'old' -> 'new' in *.py"
    )
