"""Runbooks do not rot: every command in runbooks/*.md and docs/troubleshooting.md
is checked against the real CLI, and the read-only ones run for real.

The convention is documented at the top of runbooks/README.md:
- ```sh blocks: each `orchestrator ...` line resolves to a real command whose
  `--help` lists every option used; the commands in RUN are executed, top to
  bottom per file, against an embedded deployment in a temporary folder on
  which a tiny real job ran, with ALL_CAPS placeholders replaced by real ids
  and paths. `# exit N` at the end of a line is the expected exit code.
- ```sh elsewhere blocks (kubectl, helm, docker compose, systemctl, celery
  control, redis-cli, psql) are not run: the orchestrator commands inside
  them are resolved the same way, and what they name (repository paths,
  compose services, systemd units, Helm object names, the Celery app, queue
  and control commands, Redis keys, SQL tables) must exist.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli_helpers import ROOT, cli, shape_env

DOCS = sorted((ROOT / "runbooks").glob("*.md")) + [ROOT / "docs" / "troubleshooting.md"]
CONFIG_DIR = ROOT / "compose" / "config"

# Commands the test runs for real: they only read, or only touch the
# temporary deployment (keygen into a temporary folder, sign, an idempotent
# migration of the embedded store).
RUN = {
    ("status",),
    ("pending",),
    ("health",),
    ("doctor",),
    ("smoke",),
    ("worker-probe",),
    ("audit", "verify"),
    ("audit", "replay"),
    ("audit", "export"),
    ("audit", "keygen"),
    ("audit", "sign"),
    ("config", "check"),
    ("config", "show"),
    ("db", "status"),
    ("db", "upgrade"),
    ("policy", "check"),
}

PLACEHOLDER = re.compile(r"(?<![$\w])[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*(?![\w=])")
# ALL_CAPS words in sh blocks that are not placeholders.
NOT_PLACEHOLDERS = {"PATH"}
FENCE = re.compile(r"^```(\S*)(?:[ \t]+(\S+))?[ \t]*$")
EXIT = re.compile(r"#\s*exit\s+(\d+)\s*$")
SEPARATORS = {"|", "||", "&&", ";", "&"}


# -- reading the documents ----------------------------------------------------


@dataclass(frozen=True)
class Line:
    doc: Path
    lineno: int
    block: str  # "sh" or "elsewhere"
    text: str  # continuations joined, comment kept
    expect: int

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.lineno}"


def command_lines(doc: Path) -> Iterator[Line]:
    block: str | None = None
    pending, start = "", 0
    for n, raw in enumerate(doc.read_text().splitlines(), 1):
        fence = FENCE.match(raw.strip())
        if fence and block is None and raw.strip() != "```":
            lang, extra = fence.group(1), fence.group(2)
            if lang in ("sh", "bash", "shell", "console"):
                assert lang == "sh", f"{doc}:{n}: use ```sh or ```sh elsewhere (got {lang})"
                assert extra in (None, "elsewhere"), f"{doc}:{n}: unknown block tag {extra}"
                block = "elsewhere" if extra else "sh"
            else:
                block = "other"
            continue
        if raw.strip() == "```" and block is None:
            block = "other"
            continue
        if raw.strip().startswith("```") and block is not None:
            block = None
            continue
        if block in (None, "other"):
            continue
        line = raw.strip()
        if not pending:
            start = n
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if not line or line.startswith("#"):
            continue
        m = EXIT.search(line)
        yield Line(doc, start, block, line, int(m.group(1)) if m else 0)


def all_lines() -> list[Line]:
    return [line for doc in DOCS for line in command_lines(doc)]


def segments(text: str) -> list[list[str]]:
    lex = shlex.shlex(text, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    out: list[list[str]] = [[]]
    for tok in lex:
        if tok in SEPARATORS:
            out.append([])
        else:
            out[-1].append(tok)
    return [s for s in out if s]


def split_assignments(words: list[str]) -> tuple[dict[str, str], list[str]]:
    env: dict[str, str] = {}
    i = 0
    while i < len(words) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[i]):
        k, v = words[i].split("=", 1)
        env[k] = v
        i += 1
    return env, words[i:]


# -- the real CLI ---------------------------------------------------------------


@functools.cache
def _command(path: tuple[str, ...]) -> Any:
    """The real CLI's click command at `path` (typer builds the same tree that
    `--help` prints), or None when there is no such command."""
    import typer.main

    from orchestrator.cli.main import app

    cmd: Any = typer.main.get_command(app)
    for name in path:
        cmd = getattr(cmd, "commands", {}).get(name)
        if cmd is None:
            return None
    return cmd


def subcommands(path: tuple[str, ...]) -> set[str]:
    cmd = _command(path)
    return set(getattr(cmd, "commands", {})) if cmd is not None else set()


def options(path: tuple[str, ...]) -> set[str]:
    cmd = _command(path)
    found = {"--help"}
    for param in getattr(cmd, "params", ()):
        found |= set(getattr(param, "opts", ())) | set(getattr(param, "secondary_opts", ()))
    return {o for o in found if o.startswith("-")}


@dataclass(frozen=True)
class Resolved:
    path: tuple[str, ...]
    problems: tuple[str, ...]


def resolve(args: list[str]) -> Resolved:
    """Walk `orchestrator ARGS` down the command tree, checking every option."""
    path: tuple[str, ...] = ()
    problems: list[str] = []
    i = 0
    while i < len(args):
        w = args[i]
        if w == "--":
            break
        subs = subcommands(path)
        if w.startswith("-"):
            name = w.split("=", 1)[0]
            if name not in options(path):
                problems.append(f"`{name}` is not an option of `orchestrator {' '.join(path)}`")
            # a group-level option's value (`--config FILE`) is not a subcommand
            if (
                subs
                and "=" not in w
                and i + 1 < len(args)
                and args[i + 1] not in subs
                and not args[i + 1].startswith("-")
            ):
                i += 1
        elif subs and w in subs:
            path += (w,)
        elif subs and not path:
            problems.append(f"`{w}` is not an orchestrator command")
            break
        i += 1
    if not path:
        problems.append("no command")
    elif _command(path) is None:
        problems.append(f"`orchestrator {' '.join(path)}` is not a command")
    return Resolved(path, tuple(problems))


def orchestrator_commands(line: Line) -> list[tuple[dict[str, str], list[str]]]:
    """Each `orchestrator ...` invocation in a line: (assignments, arguments)."""
    found = []
    top = subcommands(())
    for seg in segments(line.text):
        env, words = split_assignments(seg)
        if words and words[0] == "orchestrator":
            found.append((env, words[1:]))
            continue
        for i, w in enumerate(words[1:], 1):
            if (
                w == "orchestrator"
                and i + 1 < len(words)
                and words[i - 1] not in ("-n", "--namespace", "-u", "-p", "--project-name")
                and (words[i + 1] in top or words[i + 1].startswith("--config"))
            ):
                found.append(({}, words[i + 1 :]))
                break
    return found


# -- (a) every command resolves -----------------------------------------------------


def test_the_documents_exist_and_hold_commands():
    names = {p.name for p in DOCS}
    assert {
        "README.md",
        "deployment.md",
        "upgrade.md",
        "rollback.md",
        "diagnostics.md",
        "oncall.md",
        "audit.md",
        "troubleshooting.md",
    } <= names
    for doc in DOCS:
        assert doc.exists(), doc
        if doc.name != "README.md":
            assert any(True for _ in command_lines(doc)), f"{doc} has no command"


def test_every_orchestrator_command_is_a_real_command_with_real_options():
    problems = []
    count = 0
    for line in all_lines():
        for _, args in orchestrator_commands(line):
            count += 1
            res = resolve(args)
            problems += [f"{line.where}: {p}  ({line.text})" for p in res.problems]
    assert count > 50
    assert not problems, "\n".join(problems)


def test_sh_blocks_hold_only_orchestrator_commands_with_known_placeholders(tmp_path):
    known = set(placeholders_for(tmp_path, Deployment("J", "S", tmp_path)))
    problems = []
    for line in all_lines():
        if line.block != "sh":
            continue
        for seg in segments(line.text):
            env, words = split_assignments(seg)
            if words[:1] == ["export"]:
                continue
            if words[:1] != ["orchestrator"]:
                problems.append(
                    f"{line.where}: `{' '.join(words)}` is not an orchestrator "
                    "command: put it in a ```sh elsewhere block"
                )
        text = EXIT.sub("", line.text.split(" #")[0])
        for word in PLACEHOLDER.findall(text):
            if len(word) > 2 and word not in known and word not in NOT_PLACEHOLDERS:
                problems.append(f"{line.where}: unknown placeholder {word}")
    assert not problems, "\n".join(problems)


def test_every_non_orchestrator_command_names_real_things():
    from orchestrator.ops import heartbeat
    from tasks.app import app

    queue = app.conf.task_default_queue
    assert queue == "orchestrator"
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    services = set(compose["services"])
    templates = "".join(
        p.read_text() for p in (ROOT / "helm" / "agent-orchestrator" / "templates").glob("*.yaml")
    )
    celery_cmds = {kind: celery_list(kind) for kind in ("control", "inspect")}
    tables = {"events", "snapshots", "alembic_version"}
    problems: list[str] = []
    count = 0

    def bad(line: Line, why: str) -> None:
        problems.append(f"{line.where}: {why}  ({line.text})")

    for line in all_lines():
        if line.block != "elsewhere":
            continue
        for seg in segments(line.text):
            _, words = split_assignments(seg)
            if words[:1] == ["sudo"]:
                words = words[3:] if words[1:2] == ["-u"] else words[1:]
            if not words:
                continue
            count += 1
            for w in words:
                m = re.match(
                    r"^(?:\.\./)?((?:compose|helm|docs|runbooks|events|orchestrator|"
                    r"tasks)/[\w./-]+)",
                    w,
                )
                if (
                    m
                    and not (ROOT / m.group(1)).exists()
                    and not (ROOT / "compose" / m.group(1)).exists()
                ):
                    bad(line, f"{m.group(1)} does not exist")
            prog = words[0]
            if prog == "docker" and words[1:2] == ["compose"]:
                sub = [w for w in words[2:]]
                # drop -f FILE pairs before the subcommand
                while sub and sub[0].startswith("-"):
                    sub = sub[2:] if sub[0] in ("-f", "-p") else sub[1:]
                verb, rest = sub[0], sub[1:]
                positional = []
                skip = False
                for w in rest:
                    if skip:
                        skip = False
                        continue
                    if w.startswith("-"):
                        skip = w in ("-t", "--timeout", "-e", "-u", "--scale")
                        continue
                    positional.append(w)
                if verb in ("exec", "run"):
                    positional = positional[:1]
                elif verb in ("config",):
                    positional = []
                for s in positional:
                    if s not in services:
                        bad(line, f"{s} is not a service of compose/docker-compose.yml")
            elif prog == "celery":
                if words[1:3] != ["-A", "tasks.app"]:
                    bad(line, "celery must name the project's app: celery -A tasks.app")
                    continue
                kind = words[3]
                if kind in celery_cmds:
                    cmd = words[4]
                    if cmd not in celery_cmds[kind]:
                        bad(line, f"`{cmd}` is not a celery {kind} command")
                    if cmd in ("cancel_consumer", "add_consumer") and words[5:6] != [queue]:
                        bad(line, f"the project's queue is `{queue}`")
                elif kind not in ("beat", "worker", "flower"):
                    bad(line, f"celery {kind}?")
            elif prog == "redis-cli":
                upper = [w.upper() for w in words]
                if "LLEN" in upper and words[upper.index("LLEN") + 1] != queue:
                    bad(line, f"the queue list is `{queue}`")
                if "--pattern" in words and not words[words.index("--pattern") + 1].startswith(
                    heartbeat.REDIS_PREFIX
                ):
                    bad(line, f"heartbeat keys start with {heartbeat.REDIS_PREFIX}")
            elif prog == "psql":
                sql = " ".join(words)
                named = set(re.findall(r"\bFROM\s+(\w+)", sql)) | set(
                    re.findall(r"relation_size\('(\w+)'\)", sql)
                )
                if not named or named - tables:
                    bad(line, f"psql must name tables of events/schema.py ({named - tables})")
            elif prog in ("systemctl", "journalctl", "systemd-analyze"):
                for w in words[1:]:
                    unit = Path(w).name.removesuffix(".service")
                    if (
                        unit.startswith("orchestrator-")
                        and not (ROOT / "compose" / "systemd" / f"{unit}.service").exists()
                    ):
                        bad(line, f"no unit compose/systemd/{unit}.service")
            elif prog == "kubectl":
                for w in words:
                    m = re.match(r"(?:deploy|job)/orch-agent-orchestrator-([\w-]+)$", w)
                    if m and f'include "orch.fullname" . }}}}-{m.group(1)}\n' not in templates:
                        bad(line, f"the chart makes no object ending -{m.group(1)}")
    assert count > 30
    assert not problems, "\n".join(problems)


@functools.cache
def celery_list(kind: str) -> frozenset[str]:
    r = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks.app", kind, "--list"],
        env={k: v for k, v in os.environ.items() if not k.startswith("ORCH_")},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return frozenset(re.findall(r"^  ([a-z_]+)", r.stdout, re.M))


def test_every_shipped_alert_has_an_oncall_section():
    rules = yaml.safe_load((ROOT / "compose" / "prometheus" / "alerts.yml").read_text())
    alerts = [r["alert"] for g in rules["groups"] for r in g["rules"]]
    headings = set(
        re.findall(r"^## (\S+)\s*$", (ROOT / "runbooks" / "oncall.md").read_text(), re.M)
    )
    assert alerts and set(alerts) <= headings, set(alerts) - headings


def test_metrics_named_in_runbooks_are_documented():
    documented = set(re.findall(r"`(orch_\w+)`", (ROOT / "docs" / "observability.md").read_text()))
    for doc in DOCS:
        for name in re.findall(r"\b(orch_[a-z_]+)", doc.read_text()):
            base = re.sub(r"_(count|sum|bucket)$", "", name)
            assert base in documented, f"{doc}: {name} is not in docs/observability.md"


# -- the sample production configuration -------------------------------------------


def test_the_production_toml_loads_into_settings_strictly(tmp_path):
    env = shape_env(tmp_path, ORCH_CONFIG=str(CONFIG_DIR / "production.toml"))
    r = cli(env, "config", "check", "--strict", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    from orchestrator.config.settings import Settings

    os_env = {k: v for k, v in os.environ.items()}
    try:
        for k in [k for k in os.environ if k.startswith("ORCH_")]:
            del os.environ[k]
        os.environ["ORCH_CONFIG"] = str(CONFIG_DIR / "production.toml")
        s = Settings()
    finally:
        os.environ.clear()
        os.environ.update(os_env)
    assert s.broker_url == "redis://redis:6379/0" and s.worker_probe_port == 9100
    assert s.policy_file is not None and s.policy_file.name == "policy.yaml"


def test_the_production_policy_loads_and_decides(tmp_path):
    from orchestrator.guard.policy import load_policy

    loaded = load_policy(CONFIG_DIR / "policy.yaml")  # every rule's examples checked
    assert loaded.name == "production"
    env = shape_env(tmp_path)
    p = str(CONFIG_DIR / "policy.yaml")
    assert cli(env, "policy", "check", "--policy", p, "--", "git", "status").returncode == 0
    denied = cli(
        env,
        "policy",
        "check",
        "--policy",
        p,
        "--json",
        "--",
        "git",
        "push",
        "--force",
        "origin",
        "main",
    )
    assert denied.returncode == 3 and '"decision": "deny"' in denied.stdout
    ci = cli(
        env, "policy", "check", "--policy", p, "--path", ".github/workflows/ci.yml", "--op", "write"
    )
    assert ci.returncode == 3 and "no-ci-config" in ci.stdout


# -- (b) the runnable ones run ------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    job_id: str
    session_id: str
    root: Path


TINY_JOB = """\
name: runbook-check
tier: read-write
targets: [repos/app]
steps:
  - kind: replace
    name: replace
    pattern: 'status: before'
    replacement: 'status: after'
    literal: true
    expect: 1
  - kind: read
    name: read-back
    path: STATUS.txt
"""


@pytest.fixture(scope="module")
def shared_deployment(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Deployment, dict]]:
    """One deployment the pages that only read share."""
    with _deployed(tmp_path_factory.mktemp("shared") / "deployment") as found:
        yield found


@pytest.fixture
def deployment(
    request: pytest.FixtureRequest, doc: Path, tmp_path: Path
) -> Iterator[tuple[Deployment, dict]]:
    """The audit page gets a deployment of its own: it signs with keys of its
    own, which a later page's `audit verify` would rightly call untrusted."""
    if doc.name != "audit.md":
        yield request.getfixturevalue("shared_deployment")
        return
    with _deployed(tmp_path / "deployment") as found:
        yield found


@contextlib.contextmanager
def _deployed(root: Path) -> Iterator[tuple[Deployment, dict]]:
    """A tiny real job run on an embedded deployment at `root`, its worker kept."""
    env = shape_env(root)
    (root / "repos" / "app").mkdir(parents=True)
    (root / "repos" / "app" / "STATUS.txt").write_text("status: before\n")
    spec = root / "job.yaml"
    spec.write_text(TINY_JOB)
    r = cli(env, "run", str(spec), "--base-dir", str(root), "--json", "--keep-worker")
    pidfile = root / "state" / "worker.pid"
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        import json

        job = json.loads(r.stdout)
        assert {s["status"] for s in job["sessions"]} == {"completed"}, job
        for _ in range(100):  # the last session's task completes the job right after
            if (
                json.loads(cli(env, "status", job["job_id"], "--json").stdout)["status"]
                == "completed"
            ):
                break
            time.sleep(0.1)
        yield Deployment(job["job_id"], job["sessions"][0]["session_id"], root), env
    finally:
        if pidfile.exists():
            pid = int(pidfile.read_text().strip())
            try:
                os.kill(pid, signal.SIGTERM)  # warm shutdown of the worker `run` left
                for _ in range(300):
                    os.kill(pid, 0)
                    time.sleep(0.1)
            except ProcessLookupError:
                pass


def placeholders_for(doc_dir: Path, d: Deployment) -> dict[str, str]:
    return {
        "JOB_ID": d.job_id,
        "SESSION_ID": d.session_id,
        "CONFIRMATION_ID": "no-such-confirmation",
        "REASON": "checked-by-tests",
        "KEY_DIR": str(doc_dir / "keys"),
        "NEW_KEY_DIR": str(doc_dir / "new-keys"),
        "EXPORT_FILE": str(doc_dir / "export.jsonl"),
        "DIGESTS_FILE": str(doc_dir / "digests.jsonl"),
        "POLICY_FILE": str(CONFIG_DIR / "policy.yaml"),
        "REPO_DIR": str(d.root / "repos" / "app"),
        "CIRCUIT_HOST": "example.invalid",
        "WORKER_NAME": "celery@nowhere",
    }


def substitute(text: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):
        text = re.sub(rf"(?<![$\w]){name}(?!\w)", lambda _m, v=values[name]: v, text)
    return text


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_runnable_commands_run_against_a_real_deployment(doc: Path, deployment, tmp_path):
    d, base_env = deployment
    values = placeholders_for(tmp_path / "files", d)
    (tmp_path / "files").mkdir()
    env = dict(base_env)
    ran, problems = 0, []
    for line in command_lines(doc):
        if line.block != "sh":
            continue
        text = substitute(line.text, values)
        for seg in segments(text):
            assign, words = split_assignments(seg)
            if words[:1] == ["export"]:
                for w in words[1:]:
                    k, v = w.split("=", 1)
                    env[k] = v
                continue
            args = words[1:]
            path = resolve(args).path
            if path not in RUN:
                continue
            started = time.monotonic()
            r = cli({**env, **assign, "COLUMNS": "200"}, *args, timeout=300)
            print(f"{line.where}: {time.monotonic() - started:.1f} s  {' '.join(words)}")
            ran += 1
            if r.returncode != line.expect:
                problems.append(
                    f"{line.where}: `{' '.join(words)}` exited {r.returncode}, "
                    f"the runbook says {line.expect}\n{r.stdout[-1500:]}"
                    f"{r.stderr[-1500:]}"
                )
    if doc.name != "README.md":
        assert ran > 0, f"{doc}: nothing ran"
    assert not problems, "\n".join(problems)
