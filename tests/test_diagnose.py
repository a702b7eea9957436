"""`orchestrator diagnose`: the allowlist policy, the parsers on captured
check output, and whole sessions through a real embedded worker.

The end-to-end part runs three diagnose sessions side by side on one worker:
the recipe on a sample repository broken on purpose (a failing test, a
module that does not import, a syntax error, an unused import; its report is
pinned whole, so a false finding shows too), the agent path on a scripted
model that also tries what a read-only session must refuse, and the agent
path on the OpenAI provider
against a local chat-completions server (tests/fake_chat_server.py). Each
session gets its own copy of a repository: two sessions in one workspace at
once would race on the sandbox's hand-over of file ownership. The reports
are validated against docs/schemas/diagnose.schema.json (every object
closed) and the broken one is pinned as a snapshot with ids and paths
replaced.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shlex
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from rich.console import Console

from events.store import open_store
from orchestrator.cli.diagnose import table
from orchestrator.config.settings import Settings
from orchestrator.guard.decision import Usage, decide
from orchestrator.guard.policy import parse_policy
from orchestrator.ops import workers
from orchestrator.run import check_output as co
from orchestrator.run import diagnose as dg
from orchestrator.run.sample_repos import create_sample_repos
from tests.cli_helpers import ROOT, cli, shape_env
from tests.fake_chat_server import FakeChatServer, Reply, tool_call
from tests.processes import dies_with_us

SCHEMA = json.loads((ROOT / "docs" / "schemas" / "diagnose.schema.json").read_text())
SANDBOX_PATH = "/usr/bin:/bin"
PROSE = "The suite has one failing test (the VAT rate) and one module that does not import."


# -- the policy ------------------------------------------------------------------------


def test_complement_patterns_match_every_string_except_the_words() -> None:
    import fnmatch

    words = ["-m", "-B", "ab", "a]", "a-", "[x", "*"]
    patterns = dg.complement(words)
    alphabet = "ab-mB]*[x!"
    for n in range(4):
        for chars in itertools.product(alphabet, repeat=n):
            s = "".join(chars)
            matched = any(fnmatch.fnmatchcase(s, p) for p in patterns)
            assert matched == (s not in words), (s, patterns)


POLICY = parse_policy(dg.diagnose_policy().model_dump(mode="json"))

ALLOWED = [
    *(shlex.join(c.argv) for c in dg.CHECKS),
    "python3 -B -m pytest -p no:cacheprovider --co -q tests/test_x.py",
    "python3 -B -m unittest discover tests",
    "ruff check -n src tests",
    "/usr/bin/python3 -B -m unittest discover",
]
DENIED = [
    "python3",
    "python3 -c pass",
    "python3 x.py",
    "python3 -m pip install x",
    "python3 -B -m pytest",  # cut short
    "python3 -B -m pytest -q",  # not a check's words
    "python3 -B -m pytest -p no:cacheprovider --co -q --basetemp=.",  # pytest empties it
    "python3 -B -m pytest -p evil --co -q",
    "python3 -B -m unittest discover @args.txt",
    "python3 -mpytest",
    "python3.11 -m pytest",
    "python",
    "pytest",
    "ruff format .",
    "ruff check --fix .",
    "ruff check -n --fix .",
    "ruff check .",
    "mypy .",
    "mypyc x.py",
    "cat setup.py",
    "ls",
    "git status",
    "rm -rf .",
    "sh -c 'python3 -B -m unittest discover'",
    "env python3 -B -m unittest discover",
]


def test_the_diagnose_policy_allows_exactly_the_checks_with_paths_after_them() -> None:
    decided = {
        c: decide("shell", {"command": shlex.split(c)}, POLICY, tier="exec").decision
        for c in ALLOWED + DENIED
    }
    assert decided == {**{c: "allow" for c in ALLOWED}, **{c: "deny" for c in DENIED}}


def test_the_diagnose_policy_refuses_every_write_whatever_the_path() -> None:
    usage = Usage()
    verdicts = {
        (tool, path): decide(tool, {"path": path}, POLICY, tier="exec", usage=usage)
        for tool in ("write", "delete")
        for path in ("notes.txt", "/etc/motd")
    }
    assert {k: (v.decision, v.rule_id) for k, v in verdicts.items()} == {
        ("write", "notes.txt"): ("deny", "quota:tool_calls:write"),
        ("write", "/etc/motd"): ("deny", "quota:tool_calls:write"),
        ("delete", "notes.txt"): ("deny", "quota:tool_calls:delete"),
        ("delete", "/etc/motd"): ("deny", "quota:tool_calls:delete"),
    }
    assert decide("read", {"path": "setup.py"}, POLICY, tier="exec").decision == "allow"
    assert decide("read", {"path": ".env"}, POLICY, tier="exec").decision == "deny"


def test_an_allowlisted_command_may_not_be_the_start_of_another() -> None:
    with pytest.raises(ValueError, match="is a prefix of"):
        dg.allowlist_rules([("ruff", "check"), ("ruff", "check", "-n")])


# -- parsing captured output -------------------------------------------------------------

ROOT_DIR = "/work/repo"

PYTEST_RUN = """\
============================= test session starts ==============================
platform linux -- Python 3.11.7, pytest-9.2.0, pluggy-1.7.0
rootdir: /work/repo
collected 7 items / 2 errors

tests/test_invoices.py ....FF                                            [ 85%]

==================================== ERRORS ====================================
____________________ ERROR collecting tests/test_imports.py ____________________
ImportError while importing test module '/work/repo/tests/test_imports.py'.
Hint: make sure your test modules/packages have valid Python names.
Traceback:
/usr/lib/python3.11/importlib/__init__.py:126: in import_module
    return _bootstrap._gcd_import(name[level:], package, level)
tests/test_imports.py:3: in <module>
    from billing.nonexistent import thing
E   ModuleNotFoundError: No module named 'billing.nonexistent'
____________________ ERROR collecting tests/test_syntax.py _____________________
/venv/lib/python3.11/site-packages/_pytest/python.py:528: in importtestmodule
    mod = import_path(
<frozen importlib._bootstrap>:1204: in _gcd_import
    ???
/usr/lib/python3.11/ast.py:50: in parse
    return compile(source, filename, mode, flags,
E     File "/work/repo/tests/test_syntax.py", line 1
E       def test_y(:
E                  ^
E   SyntaxError: invalid syntax
=================================== FAILURES ===================================
_________________ InvoiceTest.test_vat_rate_is_twenty_percent __________________

self = <tests.test_invoices.InvoiceTest testMethod=test_vat_rate_is_twenty_percent>

    def test_vat_rate_is_twenty_percent(self):
>       self.assertEqual(VAT_RATE, 0.25)
E       AssertionError: 0.2 != 0.25

tests/test_invoices.py:23: AssertionError
______________________________ test_plain_assert _______________________________

    def test_plain_assert():
>       assert invoice_total(1, [1.0]) == 2.0
E       assert 1.2 == 2.0
E        +  where 1.2 = invoice_total(1, [1.0])

tests/test_invoices.py:27: AssertionError
___________________________ test_unknown_user_header ___________________________

    def test_unknown_user_header():
>       assert invoice_header(42).startswith("Invoice")

tests/test_invoices.py:31: 
_ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ 
billing/invoices.py:11: in invoice_header
    user = fetch_user(user_id)
_ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ 
>           raise UnknownUser(user_id) from None
E           billing.users.UnknownUser: 42

billing/users.py:21: UnknownUser
=============================== warnings summary ===============================
tests/test_invoices.py::InvoiceTest::test_the_total_adds_vat
  /work/repo/tests/test_invoices.py:12: DeprecationWarning: Please use assertEqual instead.
    self.assertEquals(invoice_total(2, [10.0, 5.0]), 18.0)

-- Docs: https://docs.pytest.org/en/stable/how-to/capture-warnings.html
=========================== short test summary info ============================
FAILED tests/test_invoices.py::InvoiceTest::test_vat_rate_is_twenty_percent
FAILED tests/test_invoices.py::test_plain_assert - assert 1.2 == 2.0
FAILED tests/test_invoices.py::test_unknown_user_header - billing.users.Unkno...
ERROR tests/test_imports.py
ERROR tests/test_syntax.py
============== 3 failed, 4 passed, 1 warning, 2 errors in 1.95s ===============
"""


def where(findings: list[co.Finding]) -> list[tuple[str, str | None, int | None]]:
    return [(f.severity, f.file, f.line) for f in findings]


def test_pytest_failures_are_found_at_the_deepest_frame_inside_the_repository() -> None:
    found = co.parse_pytest(PYTEST_RUN, ROOT_DIR)
    assert where(found) == [
        ("error", "tests/test_imports.py", 3),
        ("error", "tests/test_syntax.py", 1),
        ("error", "tests/test_invoices.py", 23),
        ("error", "tests/test_invoices.py", 27),
        ("error", "billing/users.py", 21),
        ("warning", "tests/test_invoices.py", 12),
    ]
    assert [f.evidence for f in found[:5]] == [
        "tests/test_imports.py cannot be collected: ModuleNotFoundError: No module named "
        "'billing.nonexistent'",
        "tests/test_syntax.py cannot be collected: SyntaxError: invalid syntax",
        "tests/test_invoices.py::InvoiceTest::test_vat_rate_is_twenty_percent: "
        "AssertionError: 0.2 != 0.25",
        "tests/test_invoices.py::test_plain_assert: assert 1.2 == 2.0; +  where 1.2 = "
        "invoice_total(1, [1.0])",
        "tests/test_invoices.py::test_unknown_user_header: billing.users.UnknownUser: 42",
    ]
    assert found[2].next_step.startswith(
        "run `python3 -m pytest tests/test_invoices.py::InvoiceTest::"
        "test_vat_rate_is_twenty_percent`"
    )


def test_pytest_finding_no_tests_is_information() -> None:
    out = "\nno tests ran in 0.01s\n"
    assert where(co.parse_pytest(out, ROOT_DIR)) == [("info", None, None)]


UNITTEST_RUN = """\
E./work/repo/tests/test_invoices.py:15: DeprecationWarning: Please use assertEqual instead.
  self.assertEquals(invoice_total(3, [10.0]), 0.0)
...F.
======================================================================
ERROR: tests.test_imports (unittest.loader._FailedTest.tests.test_imports)
----------------------------------------------------------------------
ImportError: Failed to import test module: tests.test_imports
Traceback (most recent call last):
  File "/usr/lib/python3.11/unittest/loader.py", line 407, in _find_test_path
    module = self._get_module_from_name(name)
  File "/work/repo/tests/test_imports.py", line 3, in <module>
    from billing.nonexistent import thing
ModuleNotFoundError: No module named 'billing.nonexistent'


======================================================================
FAIL: test_vat_rate_is_twenty_percent (tests.test_invoices.InvoiceTest.test_vat_rate_is_twenty_percent)
----------------------------------------------------------------------
Traceback (most recent call last):
  File "/work/repo/tests/test_invoices.py", line 23, in test_vat_rate_is_twenty_percent
    self.assertEqual(VAT_RATE, 0.25)
AssertionError: 0.2 != 0.25

----------------------------------------------------------------------
Ran 7 tests in 0.001s

FAILED (failures=1, errors=1)
"""


def test_unittest_failures_and_import_errors_are_findings_with_their_line() -> None:
    found = co.parse_unittest(UNITTEST_RUN, ROOT_DIR)
    assert where(found) == [
        ("error", "tests/test_imports.py", 3),
        ("error", "tests/test_invoices.py", 23),
        ("warning", "tests/test_invoices.py", 15),
    ]
    assert found[1].evidence == "FAIL test_vat_rate_is_twenty_percent: AssertionError: 0.2 != 0.25"
    assert (
        "python3 -m unittest tests.test_invoices.InvoiceTest."
        "test_vat_rate_is_twenty_percent" in found[1].next_step
    )
    assert co.parse_unittest("\n----\nRan 0 tests in 0.000s\n\nNO TESTS RAN\n") == [
        co.Finding(
            severity="info",
            check="unittest",
            evidence="unittest discovered no tests",
            next_step=co.parse_unittest("Ran 0 tests")[0].next_step,
        )
    ]


COMPILEALL = """\
*** Error compiling './billing/broken.py'...
  File "./billing/broken.py", line 4
    def broken(:
               ^
SyntaxError: invalid syntax

"""


def test_compileall_reports_each_file_that_does_not_compile() -> None:
    found = co.parse_compileall(COMPILEALL, ROOT_DIR)
    assert where(found) == [("error", "billing/broken.py", 4)]
    assert found[0].evidence == "SyntaxError: invalid syntax"


# ruff's concise format and its full format since 0.12 (the `-->` location line).
RUFF_CONCISE = """\
billing/unused.py:1:8: F401 [*] `os` imported but unused
billing/api.py:4:5: F821 Undefined name `fetch`
billing/broken.py:4:12: SyntaxError: Expected a parameter name
Found 3 errors.
[*] 1 fixable with the `--fix` option.
"""
RUFF_FULL = """\
F401 [*] `os` imported but unused
 --> billing/unused.py:1:8
  |
1 | import os
  |        ^^
  |
help: Remove unused import: `os`

E741 Ambiguous variable name: `l`
 --> billing/api.py:9:5
  |
9 |     l = 1
  |     ^
  |

Found 2 errors.
"""


def test_ruff_diagnostics_in_either_format_are_findings() -> None:
    concise = co.parse_ruff(RUFF_CONCISE, ROOT_DIR)
    assert where(concise) == [
        ("warning", "billing/unused.py", 1),
        ("error", "billing/api.py", 4),
        ("error", "billing/broken.py", 4),
    ]
    assert concise[0].evidence == "F401 `os` imported but unused"
    assert "ruff check --fix billing/unused.py" in concise[0].next_step
    full = co.parse_ruff(RUFF_FULL, ROOT_DIR)
    assert where(full) == [("warning", "billing/unused.py", 1), ("warning", "billing/api.py", 9)]
    assert full[1].evidence == "E741 Ambiguous variable name: `l`"


MYPY = """\
billing/invoices.py:12: error: Incompatible return value type (got "int", expected "str")  [return-value]
billing/invoices.py:12: note: Revealed type is "builtins.int"
billing/users.py:3:1: error: Library stubs not installed for "yaml"  [import-untyped]
Found 2 errors in 2 files (checked 4 source files)
"""


def test_mypy_errors_are_errors_only_where_the_repository_configures_mypy() -> None:
    configured = co.parse_mypy(MYPY, ROOT_DIR, configured=True)
    assert where(configured) == [
        ("error", "billing/invoices.py", 12),
        ("error", "billing/users.py", 3),
    ]
    assert configured[0].evidence == (
        'Incompatible return value type (got "int", expected '
        '"str") [return-value] (note: Revealed type is '
        '"builtins.int")'
    )
    assert [f.severity for f in co.parse_mypy(MYPY, ROOT_DIR, configured=False)] == [
        "warning",
        "warning",
    ]


def test_a_model_answer_is_read_from_json_in_a_fence_or_bare_and_else_kept_as_text() -> None:
    fenced = (
        'Here is the report.\n```json\n{"summary": "One test fails.", "findings": '
        '[{"severity": "error", "file": "t.py", "line": "7", "check": "unittest", '
        '"evidence": "AssertionError", "next_step": "fix it"}, {"severity": "urgent", '
        '"evidence": "no place"}]}\n```'
    )
    summary, found = dg.parse_agent_answer(fenced)
    assert summary == "One test fails."
    assert found == [
        co.Finding(
            severity="error",
            file="t.py",
            line=7,
            check="unittest",
            evidence="AssertionError",
            next_step="fix it",
        ),
        co.Finding(severity="info", check="review", evidence="no place", next_step=""),
    ]
    assert dg.parse_agent_answer('{"findings": []}') == (None, [])
    summary, found = dg.parse_agent_answer("Everything looks fine to me.")
    assert summary is None and [(f.severity, f.check, f.evidence) for f in found] == [
        ("info", "agent", "Everything looks fine to me.")
    ]


# -- whole sessions through a real worker ------------------------------------------------

AGENT_SCRIPT = """\
- content: Let me see the layout first.
  tool_calls:
    - {name: list, arguments: {path: .}}
- content: Running the tests; the rest should be refused.
  tool_calls:
    - {name: shell, arguments: {command: python3 -B -m unittest discover}}
    - {name: shell, arguments: {command: "python3 -c 'open(\\"x.txt\\", \\"w\\")'"}}
    - {name: write, arguments: {path: notes.txt, content: hi}}
    - {name: shell, arguments: {command: ./tools/fix.sh}}
- content: |
    ```json
    {"summary": "One unittest test fails and one module does not compile.",
     "findings": [
      {"severity": "error", "file": "tests/test_invoices.py", "line": 23,
       "check": "python3 -B -m unittest discover", "evidence": "AssertionError: 0.2 != 0.25",
       "next_step": "decide whether VAT_RATE or the test is wrong"},
      {"severity": "warning", "file": "billing/unused.py", "line": 1, "check": "review",
       "evidence": "import os is unused", "next_step": "remove the import"}]}
    ```
"""


def _break(repo: Path) -> dict[str, int]:
    """A failing test, a test module that cannot import, a syntax error, an
    unused import and a script in the workspace; the lines they are on."""
    test = repo / "tests" / "test_invoices.py"
    test.write_text(
        test.read_text() + "\n    def test_vat_rate_is_twenty_percent(self):\n"
        "        from billing.invoices import VAT_RATE\n"
        "        self.assertEqual(VAT_RATE, 0.25)\n"
    )
    (repo / "tests" / "test_imports.py").write_text(
        "import unittest\n\nfrom billing.nonexistent import thing\n"
    )
    (repo / "billing" / "broken.py").write_text("import os\n\n\ndef broken(:\n    return 1\n")
    (repo / "billing" / "unused.py").write_text("import os\n")
    (repo / "tools").mkdir()
    (repo / "tools" / "fix.sh").write_text("#!/bin/sh\ntouch fixed\n")
    (repo / "tools" / "fix.sh").chmod(0o755)
    lines = test.read_text().splitlines()
    return {"assert": next(i for i, t in enumerate(lines, 1) if "0.25" in t)}


def _tree(repo: Path) -> dict[str, tuple[Any, ...]]:
    """Every file and folder with its mode, owner, mtime and content hash."""
    out = {}
    for path in sorted(repo.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        out[str(path.relative_to(repo))] = (
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_mtime_ns,
            digest,
        )
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three diagnose runs at once on one embedded worker (started here, so
    the commands find it running), and the repositories before and after."""
    tmp = tmp_path_factory.mktemp("diagnose")
    broken = create_sample_repos(tmp / "broken", count=1)[0]
    lines = _break(broken)
    # The agent gets a copy: two sessions on one workspace at once would race
    # on the sandbox's hand-over of the files' ownership.
    agent_repo, openai_repo = (
        Path(shutil.copytree(broken, tmp / kind / broken.name, symlinks=True))
        for kind in ("agent", "openai")
    )
    script = tmp / "agent.yaml"
    script.write_text(AGENT_SCRIPT)
    # A real model's path: the OpenAI provider against a local chat-completions
    # server; the model runs one check, then answers in prose, not the JSON.
    server = FakeChatServer().start()
    server.push(
        Reply(
            tool_calls=[tool_call("c1", "shell", {"command": "python3 -B -m unittest discover"})]
        ),
        Reply(content=PROSE),
    )
    env = shape_env(
        tmp,
        PATH=SANDBOX_PATH,
        ORCH_MODEL_BASE_URL=server.url,
        ORCH_MODEL_API_KEY="sk-test",
        ORCH_MODEL_NAME="fake-model",
    )
    settings = Settings(state_dir=tmp / "state")
    open_store(settings.effective_store_url, upgrade=True).close()
    log = open(workers.logfile(settings), "ab")
    proc = subprocess.Popen(
        workers.worker_command(settings, concurrency=3),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
        preexec_fn=dies_with_us(),
    )
    try:
        deadline = time.monotonic() + 60
        while workers.embedded_worker_pid(settings) is None:
            assert proc.poll() is None and time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.1)
        repos = {"broken": broken, "agent": agent_repo, "openai": openai_repo}
        before = {name: _tree(repo) for name, repo in repos.items()}
        commands = {
            "broken": ("diagnose", str(broken), "--json"),
            "agent": ("diagnose", str(agent_repo), "--json", "--script", str(script)),
            "openai": ("diagnose", str(openai_repo), "--json"),
            "missing": ("diagnose", str(tmp / "no-such-repo")),
        }
        envs = {
            name: {**env, "ORCH_MODEL_PROVIDER": "openai"} if name == "openai" else env
            for name in commands
        }
        with ThreadPoolExecutor(len(commands)) as pool:
            done = dict(
                zip(
                    commands,
                    pool.map(lambda name: cli(envs[name], *commands[name], timeout=180), commands),
                )
            )
        after = {name: _tree(repo) for name, repo in repos.items()}
    finally:
        workers.stop_worker(proc)
        log.close()
        server.stop()
    return {
        "done": done,
        "before": before,
        "after": after,
        "lines": lines,
        "broken": broken,
        "agent": agent_repo,
        "env": env,
        "requests": server.requests,
    }


def closed(schema: Any) -> Any:
    """Every object that lists its properties closed to others (the published
    schema allows additions; the contract test does not)."""
    if isinstance(schema, list):
        return [closed(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) for k, v in schema.items()}
    if out.get("type") == "object" and "properties" in out:
        out.setdefault("additionalProperties", False)
    return out


def report_of(runs: dict[str, Any], name: str, code: int) -> dict[str, Any]:
    done = runs["done"][name]
    assert done.returncode == code, done.stderr
    data = json.loads(done.stdout)
    Draft202012Validator.check_schema(SCHEMA)
    errors = list(Draft202012Validator(closed(SCHEMA)).iter_errors(data))
    assert not errors, [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    return data


def test_a_broken_repository_gets_error_findings_at_their_file_and_line(runs) -> None:
    data = report_of(runs, "broken", 1)
    assert data["status"] == "completed" and data["mode"] == "recipe"
    found = {(f["severity"], f["file"], f["line"]) for f in data["findings"]}
    assert {
        ("error", "tests/test_invoices.py", runs["lines"]["assert"]),
        ("error", "tests/test_imports.py", 3),
        ("error", "billing/broken.py", 4),
    } <= found
    assert data["summary"]["errors"] == sum(f["severity"] == "error" for f in data["findings"])
    assert [c["name"] for c in data["checks"]] == [c.name for c in dg.CHECKS]
    statuses = {c["name"]: c["status"] for c in data["checks"]}
    assert statuses["unittest"] == statuses["compileall"] == "ran"
    if shutil.which("ruff", path=SANDBOX_PATH):
        assert ("warning", "billing/unused.py", 1) in found


def test_a_check_whose_tool_is_missing_is_a_skipped_finding_not_a_failure(runs) -> None:
    data = report_of(runs, "broken", 1)
    skipped = [c for c in data["checks"] if c["status"] == "skipped"]
    for tool in ("ruff", "mypy"):
        if not shutil.which(tool, path=SANDBOX_PATH):
            assert tool in [c["name"] for c in skipped]
    notes = {
        (f["check"], f["severity"])
        for f in data["findings"]
        if f["evidence"].startswith("skipped: ")
    }
    assert notes == {(c["name"], "info") for c in skipped}


def test_diagnose_changes_nothing_in_the_repository(runs) -> None:
    assert runs["after"] == runs["before"]


def test_a_directory_that_does_not_exist_is_bad_input(runs) -> None:
    done = runs["done"]["missing"]
    assert done.returncode == 2 and "is not a directory" in done.stderr


def test_the_agent_writes_the_findings_and_what_is_not_a_check_is_refused(runs) -> None:
    data = report_of(runs, "agent", 1)
    assert data["mode"] == "agent" and data["provider"] == "scripted"
    assert data["agent_summary"] == "One unittest test fails and one module does not compile."
    assert [(f["severity"], f["file"], f["line"]) for f in data["findings"]] == [
        ("error", "tests/test_invoices.py", 23),
        ("warning", "billing/unused.py", 1),
    ]
    assert [(c["name"], c["status"]) for c in data["checks"]] == [
        ("unittest", "ran"),
        ("shell", "denied"),
        ("shell", "denied"),
    ]
    assert data["checks"][0]["exit_code"] == 1
    assert "not a check" in data["checks"][1]["detail"]
    assert "untrusted-program" in data["checks"][2]["detail"]
    assert not (runs["agent"] / "x.txt").exists() and not (runs["agent"] / "notes.txt").exists()
    replay = cli(runs["env"], "audit", "replay", data["session_id"], "--json")
    ledger = json.loads(replay.stdout)["ledger"]["entries"]
    assert [(e["tool"], e["decision"], e["rule_id"].split("-")[0]) for e in ledger] == [
        ("list", "allow", "tier"),
        ("shell", "allow", "allow"),
        ("shell", "deny", "diagnose"),
        ("write", "deny", "quota:tool_calls:write"),
        ("shell", "ask", "untrusted"),
    ]
    assert ledger[-1]["confirmation"] == "denied"


def test_a_real_models_prose_answer_is_kept_as_one_finding(runs) -> None:
    data = report_of(runs, "openai", 0)
    assert (data["mode"], data["provider"], data["model"]) == ("agent", "openai", "fake-model")
    assert data["findings"] == [
        {
            "severity": "info",
            "file": None,
            "line": None,
            "check": "agent",
            "evidence": PROSE,
            "next_step": (
                "the model did not answer in the report's JSON shape; "
                "read its analysis here, or run diagnose again"
            ),
        }
    ]
    assert [(c["name"], c["status"], c["exit_code"]) for c in data["checks"]] == [
        ("unittest", "ran", 1)
    ]
    chats = [r.body for r in runs["requests"] if r.path.endswith("/chat/completions")]
    assert len(chats) == 2
    instruction = next(m["content"] for m in chats[0]["messages"] if m["role"] == "user")
    assert instruction == dg.instruction()
    for check in dg.CHECKS:
        assert shlex.join(check.argv) in instruction
    assert dg.REPORT_SHAPE in instruction


def _pinned_machine() -> bool:
    """The snapshot pins a sandbox with unittest and compileall only: no
    pytest for /usr/bin/python3, no ruff or mypy on its PATH."""
    has_pytest = (
        subprocess.run(["/usr/bin/python3", "-c", "import pytest"], capture_output=True).returncode
        == 0
    )
    return not has_pytest and not any(shutil.which(t, path=SANDBOX_PATH) for t in ("ruff", "mypy"))


def normalized(data: dict[str, Any], repo: Path) -> dict[str, Any]:
    text = json.dumps(data)
    for key, placeholder in (("session_id", "<session>"), ("job_id", "<job>")):
        text = text.replace(data[key], placeholder)
    return json.loads(text.replace(str(repo), "<repo>"))


def test_the_report_of_a_broken_repository_is_pinned(runs, snapshot) -> None:
    if not _pinned_machine():
        pytest.skip("the snapshot pins a sandbox without pytest, ruff and mypy")
    data = report_of(runs, "broken", 1)
    assert normalized(data, runs["broken"]) == snapshot


def test_the_table_shows_each_check_and_each_finding(runs) -> None:
    data = report_of(runs, "broken", 1)
    console = Console(record=True, width=220)
    table(console, data)
    text = console.export_text()
    assert f"diagnose {runs['broken']} (recipe): {data['summary']['errors']} error(s)" in text
    for c in data["checks"]:
        assert c["name"] in text
    assert f"tests/test_invoices.py:{runs['lines']['assert']}" in text
    assert f"orchestrator audit replay {data['session_id']}" in text


# -- the report, from folded events --------------------------------------------------------


def _step(turn: int, outcome: str, output: str = "", message: str = "") -> list[object]:
    """One recipe step as the runner records it: completed, failed or denied."""
    from events import payloads as p

    call = f"s1/{turn}"
    out: list[object] = [
        p.TurnStarted(turn=turn, name=f"step{turn}", kind="shell"),
        p.ToolCallRequested(call_id=call, turn=turn, tool="shell", args={}),
        p.PermissionDecided(
            call_id=call,
            decision="deny" if outcome == "denied" else "allow",
            rule_id="tier" if outcome == "denied" else "allow-python3",
            policy_hash="h" * 64,
            reason="tool shell needs tier exec",
        ),
    ]
    if outcome == "completed":
        out += [
            p.ToolCallStarted(call_id=call),
            p.ToolCallCompleted(call_id=call, tool="shell", exit_code=1, output=output),
        ]
    elif outcome == "failed":
        out += [
            p.ToolCallStarted(call_id=call),
            p.ToolCallFailed(
                call_id=call,
                tool="shell",
                error=message.split(":")[0],
                message=message.split(": ", 1)[1],
                output=output,
            ),
        ]
    out.append(p.TurnCompleted(turn=turn, status="ok" if outcome == "completed" else "failed"))
    return out


def _session(steps: dict[int, list[object]]) -> Any:
    from events import payloads as p
    from events.projections import fold
    from tests.factories import place

    payloads: list[object] = [p.SessionStarted(job_id="j1", target=ROOT_DIR, steps=())]
    for turn in sorted(steps):
        payloads += steps[turn]
    payloads.append(p.SessionCompleted(files_changed=0))
    return fold(place("s1", payloads))


def test_each_check_is_read_by_its_outcome() -> None:
    not_found = "ToolInputError: program 'ruff' was not found on PATH '/usr/bin'; ..."
    state = _session(
        {
            1: _step(1, "completed", "setup.py\ntests/test_invoices.py\n"),
            2: _step(2, "completed", ""),
            3: _step(3, "completed", "/usr/bin/python3: No module named pytest\n"),
            4: _step(4, "failed", "", "ToolTimeout: command ran past its time limit of 600 s"),
            5: _step(5, "completed", UNITTEST_RUN.replace("/work/repo", ROOT_DIR)),
            6: _step(6, "denied"),
            7: _step(7, "failed", "", not_found),
        }
    )  # mypy never ran: the session ended
    data = dg.report(state, job_id="j1", target=ROOT_DIR, mode="recipe")
    assert [(c["name"], c["status"]) for c in data["checks"]] == [
        ("pytest-collect", "skipped"),
        ("pytest", "timeout"),
        ("unittest", "ran"),
        ("compileall", "denied"),
        ("ruff", "skipped"),
        ("mypy", "not-run"),
    ]
    assert data["files"] == 2 and data["summary"] == {"errors": 2, "warnings": 3, "info": 2}
    assert [(f["severity"], f["check"]) for f in data["findings"]] == [
        ("error", "unittest"),
        ("error", "unittest"),
        ("warning", "pytest"),
        ("warning", "unittest"),
        ("warning", "compileall"),
        ("info", "pytest-collect"),
        ("info", "ruff"),
    ]
    assert data["exit_code"] == 1


def test_a_session_where_no_check_could_run_says_nothing_was_verified() -> None:
    state = _session(
        {
            1: _step(1, "completed", "setup.py\n"),
            2: _step(2, "completed"),
            **{t: _step(t, "denied") for t in range(3, 9)},
        }
    )
    data = dg.report(state, job_id="j1", target=ROOT_DIR, mode="recipe")
    assert {c["status"] for c in data["checks"]} == {"denied"}
    assert data["findings"][-1]["evidence"] == "no check could run, so nothing was verified"
    assert (data["summary"]["errors"], data["exit_code"]) == (0, 0)
