"""Compare the analysis with bash: every program bash starts for a line the
policy does not deny must be one the analysis reported."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from orchestrator.guard.commands import analyze
from orchestrator.guard.decision import decide_request
from orchestrator.guard.policy import DEFAULT_POLICY
from tests.security.differential.sandbox import Box, Ran


@dataclass(frozen=True)
class Escape:
    line: str
    started: tuple[str, ...]
    reported: tuple[str, ...]
    missed: tuple[str, ...]
    decision: str


@dataclass
class Report:
    generated: int = 0
    denied: int = 0
    ran: int = 0
    timed_out: int = 0
    seconds: float = 0.0
    escapes: list[Escape] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.generated} lines generated, {self.denied} denied by the policy, "
            f"{self.ran} run in bash ({self.timed_out} timed out), "
            f"{len(self.escapes)} escapes, {self.seconds:.1f} s"
        )


def corpus() -> list[str]:
    """The adversarial lines of tests/security (the policy cases and the
    regression tests the tester's escapes became)."""
    from tests.security.test_command_policy import CASES
    from tests.security.test_shell_classes import REGRESSIONS

    return [c[0] for c in CASES] + list(REGRESSIONS)


def reported(line: str) -> tuple[str, str, tuple[str, ...]]:
    """(decision, deciding rule, program names the analysis reports)."""
    verdict = decide_request("shell", DEFAULT_POLICY, command=line)
    names = tuple(dict.fromkeys(i.name for i in analyze(line).invocations))
    return verdict.decision, verdict.rule_id, names


def compare(ran: Ran, names: Sequence[str], decision: str) -> Escape | None:
    missed = tuple(dict.fromkeys(p for p in ran.started if p not in names))
    if not missed:
        return None
    return Escape(ran.line, ran.started, tuple(names), missed, decision)


def run(box: Box, lines: Iterable[str], *, batch: int = 150) -> Report:
    """Decide every line; run the ones not denied in bash, in batches."""
    rep = Report()
    t0 = time.monotonic()
    todo: list[tuple[str, str, tuple[str, ...]]] = []
    for line in dict.fromkeys(lines):
        rep.generated += 1
        decision, _, names = reported(line)
        if decision == "deny":
            rep.denied += 1
        else:
            todo.append((line, decision, names))
    for i in range(0, len(todo), batch):
        chunk = todo[i : i + batch]
        for ran, (_, decision, names) in zip(box.run([c[0] for c in chunk]), chunk):
            rep.ran += 1
            rep.timed_out += ran.timed_out
            esc = compare(ran, names, decision)
            if esc is not None:
                rep.escapes.append(esc)
    rep.seconds = time.monotonic() - t0
    return rep
