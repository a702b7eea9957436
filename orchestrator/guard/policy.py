"""The policy document: what a policy YAML file holds (docs/policy.md), how
it loads and self-checks, and how several policies combine (the strictest of
each setting wins).

A `Policy` is a checked document plus the built-in rules
(`orchestrator.guard.builtin_rules`); its `hash` names it in every
`PermissionDecided` event. Deciding a request is
`orchestrator.guard.decision`'s work.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import orjson
import yaml
from pydantic import StrictBool, ValidationError, field_validator, model_validator

from orchestrator.errors import UserError
from orchestrator.guard.builtin_rules import (
    BUILTIN_COMMAND_RULES,
    BUILTIN_PATH_RULES,
    builtin_digest,
)
from orchestrator.guard.egress import host_rule
from orchestrator.guard.rules import (
    CommandRule,
    Decision,
    DecisionWord,
    Frozen,
    PathRule,
    example_problems,
)
from orchestrator.sandbox.limits import FILES_DEFAULT
from orchestrator.sandbox.limits import SandboxLimits as Limits  # one definition: the sandbox's

Tier = Literal["read-only", "read-write", "exec"]
TIERS: tuple[Tier, ...] = ("read-only", "read-write", "exec")


class PolicyError(UserError):
    """A policy file that does not load; lists every problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"policy {source} is invalid ({len(problems)} problem"
            f"{'s' if len(problems) != 1 else ''}):\n{lines}"
        )
        self.problems = problems


class Commands(Frozen):
    """`builtins: false` switches the built-in allow rules off, so only the
    programs `rules` allow run (an allow-list); the built-in deny and ask
    rules stay, since they only ever refuse."""

    default: DecisionWord = "ask"
    builtins: StrictBool = True
    rules: tuple[CommandRule, ...] = ()


class Network(Frozen):
    """`allow_hosts` empty means any host. The network tools hold a request to
    the lists; a shell command cannot be held to them (the sandbox gives a
    process the whole network or none), so a host list keeps shell commands
    off the network altogether rather than letting them reach everything.

    Entries are host patterns (`example.com`, `*.example.com`, `*`),
    addresses or CIDRs, each with an optional `:port`. `deny_hosts` wins over
    everything. Private, loopback, link-local and metadata addresses are
    refused to the network tools unless `allow_private` names them (a CIDR,
    an address, or a host whose addresses it allows); docs/network.md."""

    enabled: bool = False
    allow_hosts: tuple[str, ...] = ()
    deny_hosts: tuple[str, ...] = ()
    allow_private: tuple[str, ...] = ()

    @field_validator("allow_hosts", "deny_hosts", "allow_private")
    @classmethod
    def _host_entries(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for entry in v:
            host_rule(entry)  # ValueError names what is wrong with the entry
        return v

    @property
    def for_shell(self) -> bool:
        return self.enabled and not self.allow_hosts and not self.deny_hosts


class SessionLimits(Frozen):
    """Per session, decided from the QuotaUsage projection (None: no limit)."""

    tool_calls: dict[str, int] = {}
    cpu_s: float | None = None
    wall_s: float | None = None
    bytes_written: int | None = None
    files_changed: int | None = None
    tokens: int | None = None  # model tokens in + out (the agent's budget is the smaller)


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(second|minute|hour|s|m|h)\s*$")
_UNIT_S = {"second": 1, "s": 1, "minute": 60, "m": 60, "hour": 3600, "h": 3600}


def parse_rate(text: str) -> tuple[int, float]:
    """`"30/minute"` -> (30, 60.0); `"5/10s"` -> (5, 10.0)."""
    m = _RATE.match(text)
    if not m:
        raise ValueError(f"rate {text!r} is not COUNT/UNIT (e.g. '30/minute', '5/10s')")
    return int(m.group(1)), float(int(m.group(2) or 1) * _UNIT_S[m.group(3)])


class PolicyDoc(Frozen):
    """What a policy YAML file holds (docs/policy.md documents every field)."""

    version: Literal[1] = 1
    name: str = "custom"
    tier: Tier = "exec"
    allow_destructive: bool = False
    commands: Commands = Commands()
    paths: tuple[PathRule, ...] = ()
    network: Network = Network()
    limits: Limits = Limits()
    session_limits: SessionLimits = SessionLimits()
    rate_limits: dict[str, str] = {}
    # The folders a job's `toolchains:` may name (a toolchain must be one of
    # them or inside one; a relative entry means that folder inside each
    # target, e.g. `.venv`). None: any folder; empty: no toolchain at all.
    toolchains: tuple[str, ...] | None = None

    @field_validator("rate_limits")
    @classmethod
    def _rates(cls, v: dict[str, str]) -> dict[str, str]:
        for text in v.values():
            parse_rate(text)
        return v

    @model_validator(mode="after")
    def _examples_hold(self) -> PolicyDoc:
        # A broken rule fails when the policy loads (job spec or file), not in
        # production. Policy is defined below; this runs only on validation.
        problems = check_examples(Policy(self.name, self))
        if problems:
            raise ValueError("; ".join(problems))
        return self


@dataclass(frozen=True)
class Policy:
    """A loaded, checked policy. `hash` identifies it in PermissionDecided events
    (it covers the built-in rules, so a release that changes them changes it)."""

    name: str
    doc: PolicyDoc

    @property
    def document(self) -> dict[str, Any]:
        doc = self.doc.model_dump(mode="json")
        if self.doc.commands.builtins:
            # the default is left out, so policies written before the switch
            # existed keep their hash (and the events that name it)
            del doc["commands"]["builtins"]
        if self.doc.toolchains is None:
            del doc["toolchains"]  # likewise: unset, the hash is the one before the field
        if self.doc.limits.files == FILES_DEFAULT:
            del doc["limits"]["files"]  # likewise
        return doc

    @cached_property
    def hash(self) -> str:
        data = {"doc": self.document, "builtin": builtin_digest()}
        return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()

    @cached_property
    def command_rules(self) -> tuple[CommandRule, ...]:
        return (*self.builtin_command_rules, *self.doc.commands.rules)

    @cached_property
    def builtin_command_rules(self) -> tuple[CommandRule, ...]:
        """The built-in command rules in force: all, or with `builtins: false`
        only those that deny or ask."""
        if self.doc.commands.builtins:
            return BUILTIN_COMMAND_RULES
        return tuple(r for r in BUILTIN_COMMAND_RULES if r.decision != "allow")

    def explain(self) -> list[dict[str, Any]]:
        """Every rule the policy could apply, in the order it applies them:
        its id, kind, decision, where it came from and whether it is in force
        (`policy check --explain`)."""
        own = f"policy {self.name}"
        off = "built-in, switched off by commands.builtins: false"
        in_force = set(map(id, self.builtin_command_rules))
        rows = [
            _row(r, "command", "built-in" if id(r) in in_force else off, id(r) in in_force)
            for r in BUILTIN_COMMAND_RULES
        ]
        rows += [_row(r, "command", own, True) for r in self.doc.commands.rules]
        rows += [_row(r, "path", "built-in", True) for r in BUILTIN_PATH_RULES]
        rows += [_row(r, "path", own, True) for r in self.doc.paths]
        rows.append(
            {
                "id": "commands-default",
                "kind": "command",
                "decision": self.doc.commands.default,
                "source": own if "default" in self.doc.commands.model_fields_set else "built-in",
                "in_force": True,
                "matches": "a trusted program no command rule names",
            }
        )
        return rows

    @cached_property
    def path_rules(self) -> tuple[PathRule, ...]:
        return (*BUILTIN_PATH_RULES, *self.doc.paths)

    @cached_property
    def _by_program(self) -> dict[str, tuple[CommandRule, ...]]:
        return {}

    @cached_property
    def _by_path(self) -> dict[str, tuple[CommandRule, ...]]:
        return {}

    def rules_for(self, name: str) -> tuple[CommandRule, ...]:
        """The rules naming a program by name that can apply to program `name`,
        in policy order (rules are indexed by their literal program; wildcard
        ones always apply)."""
        rules = self._by_program.get(name)
        if rules is None:
            rules = self._by_program[name] = tuple(
                r
                for r in self.command_rules
                if r.path is None and (r.tokens[0] == name or _wildcard(r.tokens[0]))
            )
        return rules

    def rules_for_path(self, path: str) -> tuple[CommandRule, ...]:
        """The rules naming a program by path that can apply to the program at
        `path` (`rules.program_path`), in policy order."""
        rules = self._by_path.get(path)
        if rules is None:
            rules = self._by_path[path] = tuple(
                r
                for r in self.command_rules
                if r.path is not None and (r.path == path or _wildcard(r.path))
            )
        return rules


def _row(rule: CommandRule | PathRule, kind: str, source: str, in_force: bool) -> dict[str, Any]:
    what = rule.command if isinstance(rule, CommandRule) else ", ".join(rule.paths)
    return {
        "id": rule.id,
        "kind": kind,
        "decision": rule.decision,
        "source": source,
        "in_force": in_force,
        "matches": what,
    }


def _wildcard(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def strictest_tier(*tiers: Tier | None) -> Tier:
    """The lowest of the tiers that are set (job, session, CLI flag, config)."""
    chosen = [t for t in tiers if t is not None]
    return min(chosen, key=TIERS.index) if chosen else "exec"


def check_examples(policy: Policy) -> list[str]:
    """The policy's own rules: each `match` example must match its rule and
    each `not_match` one must not; rule ids are unique. (The built-in rules
    are checked once, when this module loads.)"""
    problems = example_problems(policy.doc.commands.rules, policy.doc.paths)
    ids = [*(r.id for r in policy.doc.commands.rules), *(r.id for r in policy.doc.paths)]
    builtin = {*(r.id for r in BUILTIN_COMMAND_RULES), *(r.id for r in BUILTIN_PATH_RULES)}
    for rid in sorted({i for i in ids if ids.count(i) > 1 or i in builtin}):
        problems.append(
            f"rule id {rid!r} is used more than once (or by a built-in rule); "
            "rule ids must be unique so the audit log names one rule"
        )
    return problems


def parse_policy(data: Any, source: str = "<policy>") -> Policy:
    try:
        doc = PolicyDoc.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise PolicyError(
            source,
            [
                f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
                for e in exc.errors(include_url=False)
            ],
        ) from None
    return Policy(doc.name, doc)


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def combine(*docs: PolicyDoc | None) -> PolicyDoc:
    """One policy from several that all apply (the job's, a `--policy` file,
    the configuration's): the strictest of each setting wins. Tiers and limits
    take the minimum, `commands.default` the strictest decision, rules are
    all kept (deny wins anyway), network is on only if every policy allows
    it (hosts: those all allow), elevation only if every policy grants it."""
    given = [d for d in docs if d is not None]
    if not given:
        return DEFAULT_POLICY.doc
    if len(given) == 1:
        return given[0]
    limits = {f: min(getattr(d.limits, f) for d in given) for f in Limits.model_fields}
    session: dict[str, Any] = {
        f: _min_all([getattr(d.session_limits, f) for d in given])
        for f in SessionLimits.model_fields
        if f != "tool_calls"
    }
    calls: dict[str, int] = {}
    for d in given:
        for tool, cap in d.session_limits.tool_calls.items():
            calls[tool] = min(cap, calls.get(tool, cap))
    rates: dict[str, str] = {}
    for d in given:
        for tool, text in d.rate_limits.items():
            if tool not in rates or _per_s(text) < _per_s(rates[tool]):
                rates[tool] = text
    # An empty host list means any host: only the non-empty lists narrow, and
    # lists with no host in common leave no network at all.
    lists = [set(d.network.allow_hosts) for d in given if d.network.allow_hosts]
    hosts = set.intersection(*lists) if lists else set()
    network_on = all(d.network.enabled for d in given) and not (lists and not hosts)
    # Denials add up; private addresses stay reachable only where every policy
    # allows them (an empty allow_private allows none, unlike allow_hosts).
    deny_hosts = sorted({h for d in given for h in d.network.deny_hosts})
    private = set.intersection(*(set(d.network.allow_private) for d in given))
    return PolicyDoc(
        name="+".join(d.name for d in given),
        tier=strictest_tier(*(d.tier for d in given)),
        allow_destructive=all(d.allow_destructive for d in given),
        commands=Commands(
            default=max(Decision[d.commands.default.upper()] for d in given).word,
            # one allow-list among the policies makes the whole an allow-list
            builtins=all(d.commands.builtins for d in given),
            rules=tuple(r for d in given for r in d.commands.rules),
        ),
        paths=tuple(r for d in given for r in d.paths),
        network=Network(
            enabled=network_on,
            allow_hosts=tuple(sorted(hosts)),
            deny_hosts=tuple(deny_hosts),
            allow_private=tuple(sorted(private)),
        ),
        limits=Limits(**limits),
        session_limits=SessionLimits(tool_calls=calls, **session),
        rate_limits=rates,
        toolchains=allowed_in_all([d.toolchains for d in given if d.toolchains is not None]),
    )


def allowed_in_all(lists: list[tuple[str, ...]]) -> tuple[str, ...] | None:
    """The toolchain folders every list allows: each entry of a list that is
    inside (or equal to) an entry of every other list. None: no list."""
    if not lists:
        return None
    keep = [
        e for lst in lists for e in lst if all(any(_inside(e, o) for o in other) for other in lists)
    ]
    return tuple(dict.fromkeys(keep))


def _inside(path: str, root: str) -> bool:
    p, r = PurePosixPath(os.path.normpath(path)), PurePosixPath(os.path.normpath(root))
    return p.is_absolute() == r.is_absolute() and (p == r or p.is_relative_to(r))


def toolchain_refusal(
    allowed: tuple[str, ...] | None, toolchains: Sequence[str], target: str
) -> str | None:
    """Why a target's toolchains (absolute, resolved) break the policy's
    `toolchains:` list (rule TOOLCHAIN_RULE), or None. Relative entries of
    the list are folders inside `target` (resolved, like the toolchains)."""
    if allowed is None:
        return None
    roots = [a if os.path.isabs(a) else os.path.join(target, a) for a in allowed]
    for tool in toolchains:
        if not any(_inside(tool, r) for r in roots):
            listed = ", ".join(allowed) if allowed else "none"
            return (
                f"toolchain {tool} is not in a folder the policy's `toolchains:` allows "
                f"({listed}); use one of those, or ask the operator to list it"
            )
    return None


def _min_all(values: list[Any]) -> Any:
    out = None
    for v in values:
        out = _min(out, v)
    return out


def _per_s(rate: str) -> float:
    count, window = parse_rate(rate)
    return count / window


def load_policy(path: Path) -> Policy:
    """Read, validate and self-check a policy YAML file."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from None
    except yaml.YAMLError as exc:
        raise PolicyError(str(path), [f"not valid YAML: {exc}"]) from None
    return parse_policy(data, str(path))


TOOLCHAIN_RULE = "toolchains-allowed"
DEFAULT_POLICY = parse_policy({"name": "default"}, "<built-in default>")
