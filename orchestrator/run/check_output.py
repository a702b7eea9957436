"""What checks print, read into findings: pytest, unittest, compileall, ruff
and mypy output become `Finding`s with a file, a line, the evidence and what
to do next.

Pure text parsing, no process and no clock; `orchestrator.run.diagnose`
runs the checks as a session and builds the report from these.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Finding",
    "Check",
    "Severity",
    "clip",
    "parse_check",
    "parse_pytest",
    "parse_unittest",
    "parse_compileall",
    "parse_ruff",
    "parse_mypy",
]

Severity = Literal["error", "warning", "info"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Finding(_Frozen):
    """One thing diagnose found: how bad, where, which check said so, the
    output that shows it, and what to do next."""

    severity: Severity
    file: str | None = None  # relative to the target when inside it
    line: int | None = Field(default=None, ge=0)
    check: str
    evidence: str
    next_step: str


class Check(_Frozen):
    """One allowlisted check command (policies/diagnose.yaml)."""

    name: str = Field(pattern=r"^[a-z0-9-]+$")
    tool: Literal["pytest", "unittest", "compileall", "ruff", "mypy"]
    command: str  # the allowed words; paths may follow, options not
    args: tuple[str, ...] = ()  # what the recipe puts after them
    ok_exit_codes: tuple[int, ...] = (0, 1)
    timeout_s: float = Field(default=300.0, gt=0)
    description: str = ""

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(shlex.split(self.command))

    @property
    def argv(self) -> tuple[str, ...]:
        return self.words + self.args


def _rel(path: str, root: str) -> str:
    """A path as printed by a tool, relative to the workspace when inside it."""
    path = path.strip()
    if root and posixpath.isabs(path):
        norm = posixpath.normpath(path)
        top = posixpath.normpath(root)
        if norm == top or norm.startswith(top + "/"):
            return posixpath.relpath(norm, top)
        return norm
    return posixpath.normpath(path)


def _inside(path: str) -> bool:
    return not posixpath.isabs(path) and not path.startswith("../")


def clip(text: str, limit: int = 600) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


# unittest's progress dots share stderr with the warnings: `E./path/x.py:3: ...`.
_WARNING = re.compile(
    r"^\s*(?:[.EFsxu]+(?=/))?(?P<path>[^\s:][^:\n]*\.py):(?P<line>\d+): "
    r"(?P<cat>[A-Za-z_]*Warning): (?P<msg>.+)$"
)


def _warnings(output: str, root: str, check: str) -> list[Finding]:
    """Python warnings printed as `path:line: CategoryWarning: message`,
    each place once."""
    out, seen = [], set()
    for m in map(_WARNING.match, output.splitlines()):
        if m is None:
            continue
        path = _rel(m["path"], root)
        key = (path, m["line"], m["cat"], m["msg"])
        if key in seen:
            continue
        seen.add(key)
        step = (
            "move off the deprecated API before it is removed"
            if "Deprecat" in m["cat"]
            else f"look at the {m['cat']} and fix its cause"
        )
        out.append(
            Finding(
                severity="warning",
                file=path,
                line=int(m["line"]),
                check=check,
                evidence=f"{m['cat']}: {m['msg'].strip()}",
                next_step=step,
            )
        )
    return out


_PYTEST_BANNER = re.compile(r"^={3,} (?P<title>.+?) ={3,}$")
_PYTEST_HEADER = re.compile(r"^_{3,} (?P<title>.+?) _{3,}$")
_PYTEST_FRAME = re.compile(r"^(?P<path>[^\s:<][^:\n]*):(?P<line>\d+):(?: |$)")
_PYTEST_SUMMARY = re.compile(r"^(?P<kind>FAILED|ERROR) (?P<node>\S+)(?: - (?P<msg>.*))?$")


def parse_pytest(output: str, root: str = "", check: str = "pytest") -> list[Finding]:
    """pytest's failure and error sections (`--tb=short`): one finding per
    failing test or module that cannot be collected, at the deepest frame
    inside the repository; plus the warnings summary and 'no tests'."""
    lines = output.splitlines()
    nodes = {}
    for line in lines:
        m = _PYTEST_SUMMARY.match(line)
        if m:
            nodes[m["node"]] = m["kind"]
    findings: list[Finding] = []
    section = None
    block: list[str] = []
    title = ""

    def flush() -> None:
        if section in ("FAILURES", "ERRORS") and title:
            findings.append(_pytest_block(title, block, root, check, nodes))

    for line in lines:
        banner = _PYTEST_BANNER.match(line)
        if banner:
            flush()
            section, title, block = banner["title"].strip(), "", []
            continue
        header = _PYTEST_HEADER.match(line)
        if header and section in ("FAILURES", "ERRORS"):
            flush()
            title, block = header["title"], []
            continue
        block.append(line)
    flush()
    findings += _warnings(output, root, check)
    if re.search(
        r"^(no tests ran|collected 0 items)|^\d* ?no tests ran", output, re.M
    ) or re.search(r"\bno tests (ran|collected)\b", output):
        findings.append(
            Finding(
                severity="info",
                check=check,
                evidence="pytest found no tests",
                next_step="add tests, or check pytest's testpaths and python_files settings",
            )
        )
    return findings


def _pytest_block(
    title: str, block: list[str], root: str, check: str, nodes: dict[str, str]
) -> Finding:
    # Frames: `path:line: in func` (short and long tracebacks), the long
    # format's `path:line: ExcName`, and `File "path", line N` of a syntax
    # error inside the E lines. The deepest one inside the repository is where
    # it broke; when none is inside, the deepest one.
    frames: list[tuple[str, int]] = []
    errors: list[str] = []
    for text in block:
        if text.startswith("E "):
            errors.append(text[1:].strip())
        m = _PYTEST_FRAME.match(text) or _TRACE_FRAME.match(text[1:] if text[:1] == "E" else text)
        if m:
            frames.append((_rel(m["path"], root), int(m["line"])))
    local = [f for f in frames if _inside(f[0])]
    file, line_no = (local or frames or [(None, None)])[-1]
    node = _node_for(title, nodes)
    if title.startswith("ERROR collecting "):
        module = title.removeprefix("ERROR collecting ").strip()
        file = file or module
        what = f"{module} cannot be collected"
        step = (
            f"fix the error in {file}{f':{line_no}' if line_no else ''}: none of the "
            "module's tests run until it imports"
        )
    else:
        what = node or title
        step = (
            f"run `python3 -m pytest {node}` and fix the code or the test's expectation"
            if node
            else "run the failing test alone and fix the code or the expectation"
        )
    return Finding(
        severity="error",
        file=file,
        line=line_no,
        check=check,
        evidence=clip(f"{what}: {_exception(errors) or clip(' '.join(block[-3:]))}"),
        next_step=step,
    )


_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Failure|Exit|Interrupt|Warning)?: \S")


def _exception(lines: list[str]) -> str:
    """The exception line among pytest's E lines, else the first two of them."""
    named = [e for e in lines if _EXCEPTION.match(e) and not e.startswith("File ")]
    if named:
        return named[-1]
    return "; ".join(e for e in lines[:2] if e)


def _node_for(title: str, nodes: dict[str, str]) -> str | None:
    """The node id of a failure section titled `Class.test` or `test[param]`."""
    words = title.strip().replace(".", "::")
    for node in nodes:
        if node.endswith("::" + words) or node == words:
            return node
    return None


_UNITTEST_HEADER = re.compile(r"^(?P<kind>FAIL|ERROR): (?P<test>\S+)(?: \((?P<where>[^)]*)\))?")
_TRACE_FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line (?P<line>\d+)')
_RULE = re.compile(r"^(-{20,}|={20,})$")


def parse_unittest(output: str, root: str = "", check: str = "unittest") -> list[Finding]:
    """unittest's FAIL/ERROR blocks: the deepest traceback frame inside the
    repository, the exception line as evidence; 'Ran 0 tests' as info."""
    lines = output.splitlines()
    findings: list[Finding] = []
    i = 0
    while i < len(lines):
        m = _UNITTEST_HEADER.match(lines[i])
        if not m or i == 0 or not _RULE.match(lines[i - 1]):
            i += 1
            continue
        j = i + 1
        body: list[str] = []
        while j < len(lines) and not (
            _RULE.match(lines[j]) and j + 1 < len(lines) and _UNITTEST_HEADER.match(lines[j + 1])
        ):
            if lines[j].startswith("Ran ") and body and _RULE.match(body[-1]):
                body.pop()
                break
            body.append(lines[j])
            j += 1
        findings.append(_unittest_block(m, body, root, check))
        i = j
    findings += _warnings(output, root, check)
    if re.search(r"^Ran 0 tests", output, re.M):
        findings.append(
            Finding(
                severity="info",
                check=check,
                evidence="unittest discovered no tests",
                next_step="tests under unittest are test*.py files with "
                "TestCase classes; plain test functions need pytest",
            )
        )
    return findings


def _unittest_block(m: re.Match[str], body: list[str], root: str, check: str) -> Finding:
    frames = [(_rel(f["path"], root), int(f["line"])) for f in map(_TRACE_FRAME.match, body) if f]
    local = [f for f in frames if _inside(f[0])]
    file, line_no = (local or frames or [(None, None)])[-1]
    text = [b for b in body if b.strip() and not _RULE.match(b)]
    exc = next(
        (
            b.strip()
            for b in reversed(text)
            if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Failure|Exit|Interrupt)\b", b)
            or b.startswith("AssertionError")
        ),
        text[-1].strip() if text else "",
    )
    where = m["where"] or m["test"]
    dotted = where.split(" ")[0]
    if dotted.startswith("unittest.loader._FailedTest."):
        dotted = dotted.removeprefix("unittest.loader._FailedTest.")
        step = (
            f"fix the import error in {file or dotted}: unittest cannot load the module, "
            "so none of its tests run"
        )
        what = f"{m['test']} cannot be imported"
    else:
        step = f"run `python3 -m unittest {dotted}` and fix the code or the test's expectation"
        what = f"{m['kind']} {m['test']}"
    return Finding(
        severity="error",
        file=file,
        line=line_no,
        check=check,
        evidence=clip(f"{what}: {exc}"),
        next_step=step,
    )


_COMPILE_HEADER = re.compile(r"^\*\*\* Error compiling '(?P<path>.+)'\.\.\.$")


def parse_compileall(output: str, root: str = "", check: str = "compileall") -> list[Finding]:
    """`*** Error compiling 'path'...` blocks: the file, the line of the
    syntax error and its message."""
    lines = output.splitlines()
    findings: list[Finding] = []
    for i, line in enumerate(lines):
        m = _COMPILE_HEADER.match(line)
        if not m:
            continue
        body: list[str] = []
        for nxt in lines[i + 1 :]:
            if _COMPILE_HEADER.match(nxt):
                break
            body.append(nxt)
        frame = next((f for f in map(_TRACE_FRAME.match, body) if f), None)
        message = next(
            (b.strip() for b in body if re.match(r"^\s*\w*(Error|Warning)\b", b)),
            "does not compile",
        )
        path = _rel(frame["path"] if frame else m["path"], root)
        line_no = int(frame["line"]) if frame else None
        findings.append(
            Finding(
                severity="error",
                file=path,
                line=line_no,
                check=check,
                evidence=clip(message),
                next_step=f"fix the syntax at {path}"
                f"{f':{line_no}' if line_no else ''}; Python cannot import the module at all",
            )
        )
    return findings


_RUFF = re.compile(
    r"^(?P<path>[^\s:][^:\n]*):(?P<line>\d+):(?P<col>\d+): "
    r"(?:(?P<code>[A-Z]+[0-9]+) )?(?P<fix>\[\*\] )?(?P<msg>.+)$"
)
_RUFF_ARROW = re.compile(r"^\s*--> (?P<path>.+?):(?P<line>\d+):(?P<col>\d+)$")
_RUFF_HEAD = re.compile(r"^(?:(?P<code>[A-Z]+[0-9]+) )?(?P<fix>\[\*\] )?(?P<msg>\S.*)$")
_RUFF_ERRORS = re.compile(r"^(E9|F63|F7|F82)")


def parse_ruff(output: str, root: str = "", check: str = "ruff") -> list[Finding]:
    """ruff's diagnostics: `path:line:col: CODE [*] message` (the concise
    format, and the first line of each in older full output), or a
    `CODE [*] message` line followed by ` --> path:line:col` (the full
    format since 0.12). Syntax errors and undefined names are errors, the
    other rules warnings."""
    findings = []
    lines = output.splitlines()
    for i, text in enumerate(lines):
        m = _RUFF.match(text)
        if m is None:
            arrow = _RUFF_ARROW.match(text)
            head = (
                next(
                    (_RUFF_HEAD.match(h) for h in reversed(lines[max(0, i - 2) : i]) if h.strip()),
                    None,
                )
                if arrow
                else None
            )
            if arrow is None or head is None:
                continue
            code, fix, msg = head["code"] or "", head["fix"], head["msg"]
            path, line_no = arrow["path"], arrow["line"]
        else:
            code, fix, msg = m["code"] or "", m["fix"], m["msg"]
            path, line_no = m["path"], m["line"]
        msg = msg.strip()
        syntax = not code
        path = _rel(path, root)
        if syntax:
            step = f"fix the syntax at {path}:{line_no}"
        elif fix:
            step = (
                f"`ruff check --fix {path}` fixes it (outside diagnose); "
                f"`ruff rule {code}` explains the rule"
            )
        else:
            step = f"`ruff rule {code}` explains the rule; fix it by hand"
        error = syntax or bool(_RUFF_ERRORS.match(code))
        findings.append(
            Finding(
                severity="error" if error else "warning",
                file=path,
                line=int(line_no),
                check=check,
                evidence=clip(f"{code} {msg}" if code else msg),
                next_step=step,
            )
        )
    return findings


_MYPY = re.compile(
    r"^(?P<path>[^\s:][^:\n]*):(?P<line>\d+):(?:(?P<col>\d+):)? "
    r"(?P<level>error|warning|note): (?P<msg>.+?)(?:  \[(?P<code>[\w-]+)\])?$"
)


def parse_mypy(
    output: str, root: str = "", check: str = "mypy", *, configured: bool = True
) -> list[Finding]:
    """`path:line[:col]: error: message  [code]`. Errors are errors where the
    repository configures mypy, warnings where it does not (it never asked
    for types to be checked); notes are added to the finding before them."""
    findings: list[Finding] = []
    for line in output.splitlines():
        m = _MYPY.match(line)
        if not m:
            continue
        if m["level"] == "note":
            if findings and findings[-1].file == _rel(m["path"], root):
                last = findings[-1]
                findings[-1] = last.model_copy(
                    update={"evidence": clip(f"{last.evidence} (note: {m['msg'].strip()})")}
                )
            continue
        code = m["code"]
        severity = "error" if m["level"] == "error" and configured else "warning"
        path = _rel(m["path"], root)
        step = "fix the types, or annotate what mypy cannot infer"
        if code:
            step += f"; `# type: ignore[{code}]` only if it is deliberate"
        if not configured:
            step += " (the repository does not configure mypy: this is advice)"
        findings.append(
            Finding(
                severity=severity,
                file=path,
                line=int(m["line"]),
                check=check,
                evidence=clip(m["msg"].strip() + (f" [{code}]" if code else "")),
                next_step=step,
            )
        )
    return findings


def parse_check(
    check: Check, output: str, root: str = "", *, mypy_configured: bool = True
) -> list[Finding]:
    """The findings in a check's output, by the check's tool."""
    if check.tool == "pytest":
        return parse_pytest(output, root, check.name)
    if check.tool == "unittest":
        return parse_unittest(output, root, check.name)
    if check.tool == "compileall":
        return parse_compileall(output, root, check.name)
    if check.tool == "ruff":
        return parse_ruff(output, root, check.name)
    return parse_mypy(output, root, check.name, configured=mypy_configured)
