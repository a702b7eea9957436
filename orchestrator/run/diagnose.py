"""Diagnostics mode: a read-only session that runs a repository's checks and
turns what they print into findings.

`orchestrator diagnose DIR` submits a one-target job like `run` does, so
every check command is a recorded, policy-checked, sandboxed tool call. This
module is the pure part:

- the session's policy (`diagnose_policy`), built from the packaged
  `policies/diagnose.yaml`: its `checks` are the only commands allowed, every
  write is refused;
- the job (`recipe_spec` for the deterministic recipe the scripted provider
  runs, `agent_spec` for a real model);
- `report`, which builds the whole report from the session's folded state
  (the check output read by `orchestrator.run.check_output`) or from the
  model's JSON answer.

Nothing here runs a process or reads the clock; the CLI
(`orchestrator.cli.diagnose`) submits, waits and prints.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from events.projections import Projections, SessionState, ToolCall
from orchestrator.guard.policy import PolicyDoc, parse_policy
from orchestrator.guard.rules import CommandRule
from orchestrator.run.check_output import Check, Finding, clip, parse_check
from orchestrator.run.jobspec import AgentSpec, JobSpec
from orchestrator.run.steps import ListStep, SearchStep, ShellStep

__all__ = [
    "CHECKS",
    "diagnose_policy",
    "allowlist_rules",
    "complement",
    "recipe_spec",
    "agent_spec",
    "instruction",
    "report",
    "parse_agent_answer",
    "exit_code",
]

POLICY_FILE = Path(__file__).parent / "policies" / "diagnose.yaml"
OUTPUT_BYTES = 256 * 1024  # per check: the head and tail are kept
MAX_FINDINGS_PER_CHECK = 200
_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    checks: tuple[Check, ...] = Field(min_length=1)
    policy: dict[str, Any]


@lru_cache(maxsize=1)
def _config() -> _Config:
    data = yaml.safe_load(POLICY_FILE.read_text(encoding="utf-8"))
    return _Config.model_validate(data)


CHECKS: tuple[Check, ...] = _config().checks


# -- the policy -----------------------------------------------------------------------

_END = ""  # marks where a word list ends in the tries below (no word is empty)


def _literal(text: str) -> str:
    """`text` as an fnmatch pattern matching only itself."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _char_class(chars: Iterable[str]) -> str:
    """The inside of `[!...]` excluding exactly `chars`: `]` first and `-` last
    are literal there, nothing else is special in fnmatch."""
    chars = sorted(set(chars))
    head = "]" if "]" in chars else ""
    tail = "-" if "-" in chars else ""
    return head + "".join(c for c in chars if c not in "]-") + tail


def complement(words: Iterable[str]) -> list[str]:
    """fnmatch patterns that together match every string except `words`.

    Walks the character trie of `words`: at each node the string that stops
    there (unless it is a word), and every string that goes on with a
    character no word has next; past a word's last character, anything longer."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[_END] = {}
    out: list[str] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        lit = _literal(prefix)
        kids = sorted(k for k in node if k != _END)
        if _END not in node:
            out.append(lit)
        out.append(f"{lit}[!{_char_class(kids)}]*" if kids else f"{lit}?*")
        for k in kids:
            walk(node[k], prefix + k)

    walk(trie, "")
    return out


def allowlist_rules(
    commands: Sequence[tuple[str, ...]], *, prefix: str = "diagnose", reason: str = ""
) -> tuple[CommandRule, ...]:
    """Command rules allowing exactly `commands` (argv word lists), each
    followed by arguments that are not options (paths, test ids), and denying
    everything else: other programs, other words where a command's words are
    expected, a command cut short, an option (`-*`) or argument file (`@*`)
    after one. Needed because the built-in rules allow python3, ruff and mypy
    whatever their arguments, so `commands.default: deny` never applies to them."""
    for a in commands:
        for b in commands:
            if a != b and b[: len(a)] == a:
                raise ValueError(
                    f"allowlisted command {shlex.join(a)!r} is a prefix of "
                    f"{shlex.join(b)!r}; paths may follow the first, so the "
                    "second could not be told apart"
                )
    trie: dict[str, Any] = {}
    for argv in commands:
        node = trie
        for word in argv:
            node = node.setdefault(word, {})
        node[_END] = {}
    why = reason or "diagnose runs only its checks, with paths after them"
    rules: list[CommandRule] = []

    def deny(words: list[str], note: str, **kw: Any) -> None:
        rules.append(
            CommandRule(
                id=f"{prefix}-deny-{len(rules) + 1}",
                decision="deny",
                command=shlex.join(words),
                reason=f"{note}: {why}",
                **kw,
            )
        )

    def walk(node: dict[str, Any], path: list[str]) -> None:
        words = [_literal(w) for w in path]
        if _END in node:
            deny(words, "no options after a check", with_any=("-*", "@*"))
            return
        if path:
            deny(words, "not a whole check", unless_any=("*",))
        for pattern in complement(k for k in node if k != _END):
            deny([*words, pattern], "not a check")
        for k in sorted(k for k in node if k != _END):
            walk(node[k], [*path, k])

    walk(trie, [])
    allows = tuple(
        CommandRule(
            id=f"{prefix}-allow-{i + 1}",
            decision="allow",
            command=shlex.join(_literal(w) for w in argv),
            reason="an allowlisted diagnose check",
            match=(shlex.join(argv),),
        )
        for i, argv in enumerate(commands)
    )
    return (*allows, *rules)


@lru_cache(maxsize=1)
def diagnose_policy() -> PolicyDoc:
    """The packaged diagnose policy with its check allowlist expanded into rules."""
    cfg = _config()
    doc = dict(cfg.policy)
    commands = dict(doc.get("commands") or {})
    commands["rules"] = [
        r.model_dump(mode="json") for r in allowlist_rules([c.words for c in cfg.checks])
    ] + list(commands.get("rules") or ())
    doc["commands"] = commands
    return parse_policy(doc, str(POLICY_FILE)).doc


# -- the job -------------------------------------------------------------------------

_MYPY_CONFIG = r"^\[(tool\.)?mypy\]"
_MYPY_FILES = ("pyproject.toml", "setup.cfg", "mypy.ini", ".mypy.ini")


def recipe_spec(target: Path, checks: Sequence[Check] = CHECKS) -> JobSpec:
    """The deterministic recipe: list the files, look for a mypy
    configuration, run every check; each step goes on after a failure."""
    steps: list[Any] = [
        ListStep(name="files", max_output_bytes=OUTPUT_BYTES, continue_on_error=True),
        SearchStep(
            name="mypy-config", pattern=_MYPY_CONFIG, glob=_MYPY_FILES, continue_on_error=True
        ),
    ]
    steps += [
        ShellStep(
            name=c.name,
            command=c.argv,
            ok_exit_codes=c.ok_exit_codes,
            timeout_s=c.timeout_s,
            max_output_bytes=OUTPUT_BYTES,
            continue_on_error=True,
        )
        for c in checks
    ]
    return JobSpec(
        name="diagnose",
        description=f"diagnostics of {target.name}",
        targets=(str(target),),
        steps=tuple(steps),
        tier="exec",
        policy=diagnose_policy(),
    )


REPORT_SHAPE = (
    '{"summary": "one paragraph", "findings": [{"severity": "error" | "warning" '
    '| "info", "file": "path relative to the workspace, or null", "line": '
    'number or null, "check": "the command or \\"review\\"", "evidence": '
    '"the output or code that shows it", "next_step": "what to do about it"}]}'
)


def instruction(checks: Sequence[Check] = CHECKS) -> str:
    commands = "\n".join(f"- `{shlex.join(c.argv)}`: {c.description}" for c in checks)
    return (
        "Diagnose this repository without changing it: you cannot write, patch or delete "
        "files. Look at its layout and read what matters, then run the checks that fit it "
        "with the shell tool. Only these commands are allowed (you may put paths or test "
        "ids after them, not other options); every other command is denied:\n"
        f"{commands}\n"
        "A check whose tool is not installed fails to start or says `No module named ...`: "
        "note it as skipped and go on. When you are done, reply with no tool call and "
        "nothing but one JSON object of this shape:\n"
        f"{REPORT_SHAPE}\n"
        "One finding per distinct problem, most severe first; `error` for what is broken "
        "(failing tests, syntax or type errors, imports that fail), `warning` for what will "
        "break or hides problems, `info` for the rest."
    )


def agent_spec(
    target: Path,
    *,
    provider: str | None = None,
    model: str | None = None,
    turns: Sequence[dict[str, Any]] | None = None,
    max_turns: int = 20,
    checks: Sequence[Check] = CHECKS,
) -> JobSpec:
    """A job whose agent investigates and answers with a JSON report."""
    agent = AgentSpec(
        instruction=instruction(checks),
        provider=provider,  # type: ignore[arg-type]
        model=model,
        turns=tuple(turns) if turns is not None else None,
        max_turns=max_turns,
    )
    return JobSpec(
        name="diagnose",
        description=f"diagnostics of {target.name} by a model",
        targets=(str(target),),
        agent=agent,
        tier="exec",
        policy=diagnose_policy(),
    )


# -- the report -------------------------------------------------------------------------

_MODULE = {"pytest": "pytest", "mypy": "mypy", "ruff": "ruff"}
CheckStatus = Literal["ran", "skipped", "denied", "timeout", "error", "not-run"]


def _missing_tool(check: Check, call: ToolCall) -> str | None:
    """Why the check's tool is not there (program not found, `No module
    named X` for `python3 -m X`), or None when it ran."""
    if (
        call.status == "failed"
        and call.error == "ToolInputError"
        and "was not found on PATH" in call.message
    ):
        return f"{check.words[0]} is not installed where the sandbox looks (not on its PATH)"
    module = next((w for w in check.words[1:] if w in _MODULE.values()), None)
    if module is None and check.tool in _MODULE and check.words[0].startswith("python"):
        module = check.tool
    if module and re.search(rf"^\S*: No module named {re.escape(module)}\s*$", call.output, re.M):
        return f"{module} is not installed for {check.words[0]} in the sandbox"
    return None


def _check_result(
    check: Check, call: ToolCall | None, state: Projections, root: str, mypy_configured: bool
) -> tuple[dict[str, Any], list[Finding]]:
    """A recipe check's row in the report, and its findings."""
    row: dict[str, Any] = {
        "name": check.name,
        "command": shlex.join(check.argv),
        "status": "not-run",
        "exit_code": None,
        "findings": 0,
        "call_id": call.call_id if call else None,
        "detail": "",
    }
    if call is None:
        row["detail"] = "the session ended before this check"
        return row, []
    outcome, findings = _outcome(check, call, state, root, mypy_configured)
    row.update(outcome)
    findings = findings[:MAX_FINDINGS_PER_CHECK]
    row["findings"] = len(findings)
    return row, findings


def _outcome(
    check: Check, call: ToolCall, state: Projections, root: str, mypy_configured: bool
) -> tuple[dict[str, Any], list[Finding]]:
    """How the check's call ended (status, detail, exit code) and what it
    found; a check that did not run is a finding of its own."""
    missing = _missing_tool(check, call)
    if call.status in ("denied", "asked"):  # asked: the confirmation was refused
        return _denied(check, call, state)
    if missing:
        return {"status": "skipped", "detail": missing, "exit_code": call.exit_code}, [
            Finding(
                severity="info",
                check=check.name,
                evidence=f"skipped: {missing}",
                next_step=f"install {check.tool} where the worker runs to include its findings",
            )
        ]
    if call.status == "failed" and call.error == "ToolTimeout":
        return {"status": "timeout", "detail": call.message}, [
            Finding(
                severity="warning",
                check=check.name,
                evidence=clip(f"timed out: {call.message}"),
                next_step="the check ran past its time limit; run it by "
                f"hand (`{shlex.join(check.argv)}`) to see why",
            )
        ]
    if call.status == "completed" or (
        call.status == "failed" and call.exit_code is not None and call.error == "CommandFailed"
    ):
        return {"status": "ran", "exit_code": _exit(call)}, _ran(check, call, root, mypy_configured)
    return {"status": "error", "detail": call.message or call.error or call.status}, [
        Finding(
            severity="warning",
            check=check.name,
            evidence=clip(f"could not run: {call.message or call.status}"),
            next_step="see the session's events (`orchestrator audit replay SESSION`)",
        )
    ]


def _denied(
    check: Check, call: ToolCall, state: Projections
) -> tuple[dict[str, Any], list[Finding]]:
    entry = next((x for x in state.ledger.entries if x.call_id == call.call_id), None)
    why = f"rule {entry.rule_id}: {entry.reason}" if entry else "the policy"
    return {"status": "denied", "detail": f"denied by {why}"}, [
        Finding(
            severity="warning",
            check=check.name,
            evidence=f"not run: denied by {why}",
            next_step="a policy stricter than diagnose's (ORCH_POLICY_FILE, "
            "ORCH_TIER) refused the check; allow it there to include it",
        )
    ]


def _ran(check: Check, call: ToolCall, root: str, mypy_configured: bool) -> list[Finding]:
    """The findings in a check's output; a failed run that shows no error
    still says it failed."""
    findings = parse_check(check, call.output, root, mypy_configured=mypy_configured)
    if call.status == "failed" and not any(f.severity == "error" for f in findings):
        findings.append(
            Finding(
                severity="warning",
                check=check.name,
                evidence=clip(
                    f"{check.tool} exited with code {_exit(call)}: "
                    + "\n".join(call.output.strip().splitlines()[-5:])
                ),
                next_step=f"run `{shlex.join(check.argv)}` by hand to see what it reports",
            )
        )
    return findings


def _exit(call: ToolCall) -> int | None:
    """The exit code of a call, also of one that failed on it (CommandFailed
    records it in the message only)."""
    if call.exit_code is not None:
        return call.exit_code
    m = re.search(r"exited with code (-?\d+)", call.message)
    return int(m.group(1)) if m else None


def _dedupe(findings: Iterable[Finding]) -> list[Finding]:
    """One finding per place and message: pytest and unittest report the
    same failure, a collection error shows in both pytest runs."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for f in findings:
        message = f.evidence.rsplit(": ", 1)[-1] if f.file else f.evidence
        key = (f.file, f.line, message) if f.file else (f.check, message)
        if key in seen:
            continue
        seen.add(key)
        out.append(f)
    return out


def _files(call: ToolCall | None) -> int | None:
    if call is None or call.status != "completed":
        return None
    return sum(1 for line in call.output.splitlines() if line.strip())


def report(
    state: Projections, *, job_id: str, target: str, mode: str, checks: Sequence[Check] = CHECKS
) -> dict[str, Any]:
    """The diagnose report of a finished session: the checks as they ran,
    their findings (or the model's), counts and the exit code."""
    s = state.session
    root = s.target or target
    calls = {c.turn: c for c in s.calls}
    findings: list[Finding] = []
    rows: list[dict[str, Any]] = []
    agent_summary = None
    files = None
    if mode == "recipe":
        files = _files(calls.get(1))
        cfg = calls.get(2)
        mypy_configured = bool(cfg and cfg.status == "completed" and cfg.output.strip())
        for i, check in enumerate(checks):
            row, found = _check_result(check, calls.get(i + 3), state, root, mypy_configured)
            rows.append(row)
            findings += found
        if s.status == "completed" and not any(r["status"] == "ran" for r in rows):
            findings.append(
                Finding(
                    severity="warning",
                    check="diagnose",
                    evidence="no check could run, so nothing was verified",
                    next_step="see each check's status: install the tools (skipped), or allow "
                    "the shell tier where ORCH_TIER or ORCH_POLICY_FILE is stricter (denied)",
                )
            )
    else:
        rows = _agent_rows(s, state.ledger.entries, checks)
        last = s.agent.last_reply if s.agent else None
        if s.status == "completed" and last is not None:
            agent_summary, findings = parse_agent_answer(last.text or "")
    findings = _dedupe(findings)
    findings.sort(key=lambda f: _SEVERITY_ORDER[f.severity])  # stable: check order kept
    counts = {k: sum(1 for f in findings if f.severity == k) for k in ("error", "warning", "info")}
    status = "waiting" if s.waiting and not s.finished else s.status
    data: dict[str, Any] = {
        "target": target,
        "mode": mode,
        "provider": s.agent.provider if s.agent else "scripted",
        "model": s.agent.model if s.agent else None,
        "job_id": job_id,
        "session_id": s.session_id,
        "status": status,
        "error": s.error,
        "files": files,
        "checks": rows,
        "findings": [f.model_dump() for f in findings],
        "summary": {
            "errors": counts["error"],
            "warnings": counts["warning"],
            "info": counts["info"],
        },
        "agent_summary": agent_summary,
    }
    data["exit_code"] = exit_code(data)
    return data


def _agent_rows(
    s: SessionState, ledger: Sequence[Any], checks: Sequence[Check]
) -> list[dict[str, Any]]:
    """The shell commands the model ran, named after the check they are."""
    rows = []
    for c in s.calls:
        if c.tool != "shell":
            continue
        argv = _call_argv(s, c)
        check = next((k for k in checks if argv[: len(k.words)] == k.words), None)
        status: CheckStatus = "ran"
        if c.status in ("denied", "asked"):
            status = "denied"
        elif check is not None and _missing_tool(check, c):
            status = "skipped"
        elif c.status == "failed" and c.error == "ToolTimeout":
            status = "timeout"
        elif c.status == "failed" and c.error != "CommandFailed":
            status = "error"
        detail = c.message if status != "ran" else ""
        if status == "denied":
            entry = next((x for x in ledger if x.call_id == c.call_id), None)
            detail = f"denied by rule {entry.rule_id}: {entry.reason}" if entry else "denied"
        elif check is not None and status == "skipped":
            detail = _missing_tool(check, c) or ""
        rows.append(
            {
                "name": check.name if check else "shell",
                "command": shlex.join(argv),
                "status": status,
                "exit_code": _exit(c),
                "findings": 0,
                "call_id": c.call_id,
                "detail": detail,
            }
        )
    return rows


def _call_argv(s: SessionState, c: ToolCall) -> tuple[str, ...]:
    a = s.agent
    for entry in a.entries if a else ():
        for call in entry.calls:
            if call.turn == c.turn:
                try:
                    command = orjson.loads(call.arguments or "{}").get("command", "")
                    return (
                        tuple(shlex.split(command)) if isinstance(command, str) else tuple(command)
                    )
                except (orjson.JSONDecodeError, ValueError, AttributeError):
                    return ()
    return ()


class _AgentAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")
    summary: str = ""
    findings: list[Finding]


def parse_agent_answer(text: str) -> tuple[str | None, list[Finding]]:
    """The model's summary and findings from its JSON answer (bare, or in a
    ```json fence); when it is not that JSON, one info finding with its text."""
    candidates = [m.group(1) for m in re.finditer(r"```(?:json)?\s*\n(.*?)```", text, re.S)]
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        candidates.append(text[start : end + 1])
    for raw in candidates:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(data, dict) and isinstance(data.get("findings"), list):
            data["findings"] = [_lenient(f) for f in data["findings"]]
        try:
            answer = _AgentAnswer.model_validate(data)
        except ValidationError:
            continue
        return answer.summary or None, answer.findings
    return None, [
        Finding(
            severity="info",
            check="agent",
            evidence=clip(text, 4000) or "(the model gave no answer)",
            next_step="the model did not answer in the report's JSON shape; "
            "read its analysis here, or run diagnose again",
        )
    ]


def _lenient(item: Any) -> Any:
    """Accept what models commonly write: missing keys, a line as a string,
    an unknown severity (read as info)."""
    if not isinstance(item, dict):
        return item
    out = {k: item.get(k) for k in ("severity", "file", "line", "check", "evidence", "next_step")}
    sev = str(out["severity"] or "info").lower()
    out["severity"] = sev if sev in _SEVERITY_ORDER else "info"
    line = out["line"]
    out["line"] = int(line) if isinstance(line, (int, str)) and str(line).isdigit() else None
    out["file"] = str(out["file"]) if out["file"] else None
    out["check"] = str(out["check"] or "review")
    out["evidence"] = str(out["evidence"] or "")
    out["next_step"] = str(out["next_step"] or "")
    return out


def exit_code(data: dict[str, Any]) -> int:
    """0 no error findings, 1 errors found, 4 the session itself failed or
    still waits (infrastructure: a worker, the model endpoint)."""
    if data["status"] in ("failed", "waiting", "running", "new"):
        return 4
    return 1 if data["summary"]["errors"] else 0
