"""Permission decisions: pure functions from a request, a policy and the
session's usage to a `Verdict` with every rule that matched.

Like Codex's execpolicy, each rule that matches contributes a decision and
the strictest wins (`Decision.DENY > ASK > ALLOW`); the verdict keeps all
matches with their reasons, and a rule's `match`/`not_match` examples are
checked when the policy loads, so a broken rule fails at start.

The layers, in order (all are evaluated; the strictest decision wins):
1. tier: `read-only` < `read-write` < `exec`; a tool above the tier is denied;
2. quotas and rate limits, from the `QuotaUsage` projection and the time the
   caller passes in (never the clock);
3. paths: deny wins over allow; defaults deny secret-bearing paths and writes
   to `.git/`; leaving the workspace is destructive;
4. commands (shell): `orchestrator.guard.commands` finds every program that
   would run; anything it refuses is denied; each program is matched against
   the command rules (built-in ones first, then the policy's; by name for a
   trusted program, by path for one run by path), trusted programs no rule
   names get `commands.default`, untrusted ones ask (`untrusted-program`);
   sed and awk scripts are read too (`orchestrator.guard.sed_awk`);
5. destructive operations are `ask` in every tier unless the session was
   elevated (`--allow-destructive`), which turns exactly those asks into allows;
6. `secret-in-arguments`: a request whose arguments (URL, command line, file
   path, env, any string) hold a secret value the service knows, in any
   encoding the masker finds, is denied (the caller passes the values in).
"""

from __future__ import annotations

import json
import posixpath
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from orchestrator.guard import facts as facts_mod
from orchestrator.guard.commands import Analysis, Invocation, analyze, analyze_argv
from orchestrator.guard.egress import EgressDenied, check_url
from orchestrator.guard.facts import PathFact
from orchestrator.guard.masking import holds_known
from orchestrator.guard.policy import (
    DEFAULT_POLICY,
    TIERS,
    Policy,
    Tier,
    parse_rate,
    strictest_tier,
)
from orchestrator.guard.rules import (
    TRUSTED_DIRS,
    CommandRule,
    Decision,
    program_identity,
    program_path,
    rule_applies,
)
from orchestrator.guard.sed_awk import awk_runs_programs, sed_runs_or_writes

# The tier each tool needs.
TOOL_TIER: dict[str, Tier] = {
    "search": "read-only",
    "read": "read-only",
    "list": "read-only",
    "fetch": "read-only",
    "replace": "read-write",
    "write": "read-write",
    "patch": "read-write",
    "delete": "read-write",
    "shell": "exec",
    # Network tools change nothing in the workspace; `network.enabled` and the
    # egress rules are what hold them (docs/network.md).
    "web_search": "read-only",
    "browser": "read-only",
}
NETWORK_TOOLS = frozenset({"fetch", "web_search", "browser"})


@dataclass(frozen=True)
class Match:
    rule_id: str
    decision: Decision
    reason: str
    destructive: bool = False
    # A destructive ask that reaches outside the workspace (or could): the
    # session's --allow-destructive never turns it into an allow.
    outside: bool = False


@dataclass(frozen=True)
class Verdict:
    """The outcome and every rule that contributed; `rule_id` is the deciding one."""

    decision: str  # allow | deny | ask (as recorded in PermissionDecided)
    rule_id: str
    reason: str
    matches: tuple[Match, ...] = ()
    retry_after_s: float | None = None  # rate limits: when a retry would be allowed

    @property
    def level(self) -> Decision:
        return Decision[self.decision.upper()]


@dataclass(frozen=True)
class Usage:
    """What quotas and rate limits need, taken from the QuotaUsage projection."""

    tool_calls: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    bytes_written: int = 0
    files_changed: int = 0
    recent: dict[str, tuple[datetime, ...]] = field(default_factory=dict)


def _verdict(matches: list[Match], elevated: bool, retry_after: float | None = None) -> Verdict:
    final = []
    for m in matches:
        if elevated and m.destructive and m.decision == Decision.ASK and m.outside:
            m = Match(
                m.rule_id,
                m.decision,
                m.reason + " (not elevated: --allow-destructive covers the workspace only)",
                destructive=True,
                outside=True,
            )
        elif elevated and m.destructive and m.decision == Decision.ASK:
            m = Match(
                m.rule_id,
                Decision.ALLOW,
                m.reason + " (allowed: session elevated with --allow-destructive)",
                destructive=True,
            )
        final.append(m)
    # Among equally strict matches the first decides, except that an elevated
    # (destructive) one goes first: the ledger then shows what elevation allowed.
    worst = max(final, key=lambda m: (m.decision, m.destructive))
    return Verdict(
        worst.decision.word,
        worst.rule_id,
        worst.reason,
        tuple(final),
        retry_after if worst.decision == Decision.DENY else None,
    )


def decide_request(
    tool: str,
    policy: Policy,
    *,
    command: str | None = None,
    argv: Sequence[str] | None = None,
    paths: Iterable[tuple[str, str]] = (),
    tier: Tier | None = None,
    usage: Usage | None = None,
    now: datetime | None = None,
    elevated: bool = False,
    cwd: str = ".",
    url: str | None = None,
    facts: Iterable[PathFact] = (),
) -> Verdict:
    """Decide one tool request. `paths` are (access, path relative to the
    workspace) pairs the tool will touch; `command` (a bash line) or `argv`
    for the shell tool; `cwd` is relative to the workspace; `url` the
    address a network tool requests (its egress rules, from the URL alone:
    the tool checks the resolved addresses again when it connects);
    `facts` what the caller's walk found at those paths
    (`orchestrator.guard.facts`: escapes, special files, hard links)."""
    elevated = elevated or policy.doc.allow_destructive
    matches: list[Match] = []
    effective = strictest_tier(policy.doc.tier, tier)
    needed = TOOL_TIER.get(tool)
    if needed is None:
        matches.append(Match("unknown-tool", Decision.DENY, f"no tool named {tool!r}"))
    elif TIERS.index(needed) > TIERS.index(effective):
        matches.append(
            Match(
                "tier",
                Decision.DENY,
                (
                    f"tool {tool} needs tier {needed} but the session runs at tier {effective}; "
                    f"raise it with --tier {needed} (or `tier: {needed}` in the policy and job)"
                ),
            )
        )
    retry_after = None
    if usage is not None:
        quota, retry_after = _quota_matches(tool, policy, usage, now)
        matches += quota
    matches += _paths_matches(tool, policy, paths, facts, cwd)
    if tool == "delete":
        matches.append(
            Match("destructive-delete", Decision.ASK, "deleting a file", destructive=True)
        )
    if tool == "shell":
        if normalize(".", cwd) is None:
            matches.append(
                Match(
                    facts_mod.CWD,
                    Decision.DENY,
                    f"cwd {cwd!r} is outside the workspace; a shell step runs in a folder of the "
                    "workspace and no policy rule allows another. Give a path relative to it",
                )
            )
        analysis = analyze(command) if command is not None else analyze_argv(argv or ())
        matches += command_matches(policy, analysis, cwd=cwd)
    if tool in NETWORK_TOOLS:
        matches += network_matches(policy, url)
    if not matches:
        matches.append(
            Match(f"tier-{effective}", Decision.ALLOW, f"{tool} is allowed at tier {effective}")
        )
    return _verdict(matches, elevated, retry_after)


def _paths_matches(
    tool: str,
    policy: Policy,
    paths: Iterable[tuple[str, str]],
    facts: Iterable[PathFact],
    cwd: str,
) -> list[Match]:
    """The request's paths under the path rules, and what is on disk there."""
    out: list[Match] = []
    for access, path in paths:
        if tool != "shell" and normalize(path, cwd) is None:
            # File tools reach files only through the jail: outside is
            # impossible, so it is a deny (never an ask an elevation allows).
            out.append(
                Match(
                    "outside-workspace",
                    Decision.DENY,
                    f"{path!r} is outside the workspace; {tool} steps only touch files inside "
                    "it and no policy rule allows leaving it. Use a path relative to the workspace",
                )
            )
            continue
        out += path_matches(policy, access, path, cwd=cwd)
    for fact in facts:
        out += [Match(r, Decision.DENY, why) for r, why in facts_mod.fact_refusals(fact)]
    return out


def _quota_matches(
    tool: str, policy: Policy, usage: Usage, now: datetime | None
) -> tuple[list[Match], float | None]:
    out: list[Match] = []
    lim = policy.doc.session_limits
    cap = lim.tool_calls.get(tool)
    used = usage.tool_calls.get(tool, 0)
    if cap is not None and used >= cap:
        out.append(
            Match(
                f"quota:tool_calls:{tool}",
                Decision.DENY,
                f"the session has used {used} of its {cap} {tool} calls; raise "
                f"session_limits.tool_calls.{tool} in the policy",
            )
        )
    for name, limit, value in (
        ("cpu_s", lim.cpu_s, usage.cpu_s),
        ("wall_s", lim.wall_s, usage.wall_s),
        ("bytes_written", lim.bytes_written, usage.bytes_written),
        ("files_changed", lim.files_changed, usage.files_changed),
    ):
        if limit is not None and value >= limit:
            out.append(
                Match(
                    f"quota:{name}",
                    Decision.DENY,
                    f"the session has used {value:g} of its {name} quota of "
                    f"{limit:g}; raise session_limits.{name} in the policy",
                )
            )
    rate = policy.doc.rate_limits.get(tool)
    retry_after = None
    if rate is not None and now is not None:
        count, window = parse_rate(rate)
        since = now - timedelta(seconds=window)
        recent = sorted(t for t in usage.recent.get(tool, ()) if t > since)
        if len(recent) >= count:
            oldest = recent[len(recent) - count]
            retry_after = max(0.0, (oldest + timedelta(seconds=window) - now).total_seconds())
            out.append(
                Match(
                    f"rate:{tool}",
                    Decision.DENY,
                    f"{len(recent)} {tool} calls in the last {window:g} s reach the "
                    f"rate limit {rate}; retry in {retry_after:.1f} s or raise "
                    f"rate_limits.{tool} in the policy",
                )
            )
    return out, retry_after


def network_matches(policy: Policy, url: str | None) -> list[Match]:
    """A network tool's request: the session's network must be on, and the
    URL (when the request names one) pass the egress rules."""
    net = policy.doc.network
    if not net.enabled:
        return [
            Match(
                "egress-network-off",
                Decision.DENY,
                "network tools need the "
                "session's network; enable it with `network: {enabled: true}` in the "
                "policy",
            )
        ]
    if url is None:
        return []
    try:
        check_url(url, net, secrets=())
    except EgressDenied as exc:
        return [Match(exc.rule_id, Decision.DENY, f"{exc.target}: {exc.reason}")]
    return [
        Match(
            "egress-allowed",
            Decision.ALLOW,
            f"{url} passes the egress rules (its "
            "addresses are checked again when the tool connects)",
        )
    ]


# -- paths ------------------------------------------------------------------------------


def normalize(path: str, cwd: str = ".") -> str | None:
    """`path` as a clean path relative to the workspace root, or None when it
    leaves the workspace (absolute, `~`, or `..` past the root)."""
    if path.startswith("~") or "\x00" in path:
        return None
    if path.startswith("/"):
        return None
    joined = posixpath.normpath(posixpath.join(cwd, path))
    if joined == ".." or joined.startswith("../") or joined.startswith("/"):
        return None
    return joined


def path_matches(policy: Policy, access: str, path: str, *, cwd: str = ".") -> list[Match]:
    rel = normalize(path, cwd)
    if rel is None:
        if access == "write":
            return [
                Match(
                    "outside-workspace",
                    Decision.ASK,
                    f"writing {path!r}, outside the workspace",
                    destructive=True,
                    outside=True,
                )
            ]
        return [
            Match(
                "outside-workspace",
                Decision.DENY,
                f"{path!r} is outside the workspace; tools only read inside it",
            )
        ]
    out = []
    for rule in policy.path_rules:
        if rule.access not in ("any", access):
            continue
        if rule.matches(rel):
            out.append(
                Match(
                    rule.id,
                    Decision[rule.decision.upper()],
                    f"{access} {rel}: {rule.reason or 'matched ' + rule.id}",
                )
            )
    return out


def _secret_matches(policy: Policy, value: str, cwd: str) -> list[Match]:
    """Deny rules for a path named anywhere (in the workspace or out of it:
    `~/.ssh/id_rsa` is as secret as `.ssh/id_rsa`)."""
    rel = normalize(value, cwd)
    if rel is None:
        rel = posixpath.normpath(value.lstrip("~").lstrip("/")).lstrip("./") or "."
    return [m for m in path_matches(policy, "read", rel) if m.decision == Decision.DENY]


def visible(policy: Policy, rel: str, access: str = "read") -> bool:
    """Whether a globbing tool (search, replace) may see this file at all."""
    return not any(m.decision == Decision.DENY for m in path_matches(policy, access, rel))


_WRITERS = frozenset(
    {
        "rm",
        "rmdir",
        "mv",
        "cp",
        "tee",
        "touch",
        "mkdir",
        "ln",
        "truncate",
        "shred",
        "chmod",
        "chown",
        "chgrp",
        "install",
        "unlink",
        "dd",
        "patch",
    }
)


# Programs that remove or overwrite what they are given, and that a built-in
# rule already asks for: an argument known only at run time (`rm -rf "$HOME"`)
# may be outside the workspace, so elevation does not lift that ask.
_DELETERS = frozenset({"rm", "rmdir", "shred", "unlink", "truncate", "dd", "mv"})


def command_matches(policy: Policy, analysis: Analysis, *, cwd: str = ".") -> list[Match]:
    out = [Match(f"shell:{r.rule}", Decision.DENY, r.detail) for r in analysis.refusals]
    for inv in analysis.invocations:
        out += _invocation_matches(policy, inv, cwd)
    for r in analysis.redirects:
        if not r.writes:
            if r.op == "<" and r.target is not None:
                out += path_matches(policy, "read", r.target, cwd=cwd)
            continue
        if r.target is None:
            out.append(
                Match(
                    "shell:dynamic-redirect",
                    Decision.DENY,
                    "a redirect whose target is only known at run time; name the file literally",
                )
            )
        elif r.target in ("/dev/null", "/dev/stdout", "/dev/stderr"):
            continue
        else:
            out += path_matches(policy, "write", r.target, cwd=cwd)
            if r.truncates:
                out.append(
                    Match(
                        "destructive-truncating-redirect",
                        Decision.ASK,
                        f"`{r.op} {r.target}` truncates the file if it exists "
                        "(use `>>`, or a write step)",
                        destructive=True,
                    )
                )
    return out


def _invocation_matches(policy: Policy, inv: Invocation, cwd: str) -> list[Match]:
    """One program of a command line: who it is, the command rules that
    match it (or the policy's default), what its own script does (sed,
    awk), and the files its arguments name."""
    name = program_identity(inv.program)
    out = _rule_matches(policy, inv, name, cwd)
    if name is None and not out:  # no rule names the program by its path
        out = [_untrusted(inv, cwd)]
    if sed_runs_or_writes(inv):
        out.append(
            Match(
                "sed-exec",
                Decision.DENY,
                "a sed script with the e (execute) or w "
                "(write file) command, or a script read from a file (-f), runs "
                "programs or writes files the policy cannot see",
            )
        )
    if awk_runs_programs(inv):
        out.append(
            Match(
                "awk-exec",
                Decision.DENY,
                "an awk program that calls system() or "
                "pipes to a command runs programs the policy cannot see",
            )
        )
    return out + _argument_matches(policy, inv, cwd)


def _untrusted(inv: Invocation, cwd: str) -> Match:
    """A program run by a path outside the trusted directories, that no rule
    names; the reason carries a rule that allows it (a YAML mapping for the
    policy's `commands.rules`)."""
    path = program_path(inv.program, cwd)
    rule = (
        f"{{id: {json.dumps('allow-' + path)}, decision: allow, "
        f"command: {json.dumps(shlex.quote(path))}}}"
    )
    return Match(
        "untrusted-program",
        Decision.ASK,
        (
            f"`{inv.program}` is not a system program (trusted: {', '.join(TRUSTED_DIRS)}); "
            "a binary in the workspace is not the tool it is named after. Allow it with this "
            f"rule in the policy's commands.rules: {rule}"
        ),
    )


def _rule_matches(policy: Policy, inv: Invocation, name: str | None, cwd: str) -> list[Match]:
    """Every command rule that applies to `inv`, by the program's name (a
    trusted one) or its path; none: `commands.default` for a trusted program
    (an untrusted one asks instead)."""
    out: list[Match] = []
    shown = inv.text()
    named = False
    candidates = policy.rules_for(name) if name is not None else ()
    if "/" in inv.program:
        candidates = (*candidates, *policy.rules_for_path(program_path(inv.program, cwd)))
    for rule in candidates:
        if not rule_applies(rule, inv.argv, cwd):
            continue
        named = True
        if rule.network:
            out += _network_rule_matches(policy, rule, shown)
        out.append(
            Match(
                rule.id,
                Decision[rule.decision.upper()],
                f"`{shown}`: {rule.reason or 'matched ' + rule.id}",
                destructive=rule.destructive,
            )
        )
    # In an allow-list (`commands.builtins: false`) a program no rule allows
    # gets the default too, even when a built-in ask rule names it.
    listed = named and (
        policy.doc.commands.builtins or any(m.decision == Decision.ALLOW for m in out)
    )
    if not listed and name is not None:
        d = Decision[policy.doc.commands.default.upper()]
        out.append(
            Match(
                "commands-default",
                d,
                (
                    f"`{inv.name}` is named by no command rule; the policy's commands.default is "
                    f"{d.word}. Add a rule for it to decide otherwise"
                ),
            )
        )
    return out


def _network_rule_matches(policy: Policy, rule: CommandRule, shown: str) -> list[Match]:
    """A program that talks to the network: denied unless the session's
    network is on for shell commands (no host list the sandbox cannot hold)."""
    if not policy.doc.network.enabled:
        return [
            Match(
                "network-off",
                Decision.DENY,
                (
                    f"`{shown}`: {rule.reason}, and the session's network is off; enable it "
                    "with `network: {enabled: true}` in the policy"
                ),
            )
        ]
    if not policy.doc.network.for_shell:
        return [
            Match(
                "network-hosts-shell",
                Decision.DENY,
                (
                    f"`{shown}`: {rule.reason}, and the policy limits the network to "
                    f"{', '.join(policy.doc.network.allow_hosts)}, which the sandbox cannot hold "
                    "a shell command to (it gets the whole network or none); remove "
                    "`network.allow_hosts` to let shell commands reach any host"
                ),
            )
        ]
    return []


def _argument_matches(policy: Policy, inv: Invocation, cwd: str) -> list[Match]:
    """Arguments that name files: secrets are denied, leaving the workspace
    to write is destructive."""
    out: list[Match] = []
    writer = inv.name in _WRITERS
    for i, arg in enumerate(inv.argv[1:], start=1):
        if inv.name in _DELETERS and i in inv.dynamic:
            out.append(
                Match(
                    "outside-workspace-unknown",
                    Decision.ASK,
                    f"`{inv.text()}` changes a file named only at run time, which may be "
                    "outside the workspace; name it literally",
                    destructive=True,
                    outside=True,
                )
            )
        if i in inv.dynamic or not arg or arg.startswith("-") and "=" not in arg:
            continue
        value = arg.split("=", 1)[1] if arg.startswith("-") else arg
        if not value or value.startswith(("http://", "https://")):
            continue
        if i not in inv.globbed:
            out += _secret_matches(policy, value, cwd)
        if writer and normalize(value, cwd) is None:
            out.append(
                Match(
                    "outside-workspace",
                    Decision.ASK,
                    f"`{inv.text()}` changes {value!r}, outside the workspace",
                    destructive=True,
                    outside=True,
                )
            )
    return out


def secret_arguments(args: Any, secrets: Sequence[str], at: str = "") -> list[str]:
    """Where (`url`, `env.TOKEN`, `command`) `args` hold a known secret value."""
    if isinstance(args, str):
        return [at or "argument"] if holds_known(args, secrets) else []
    if isinstance(args, dict):
        return [
            w
            for k, v in args.items()
            for w in secret_arguments(v, secrets, f"{at}.{k}".lstrip("."))
        ]
    if isinstance(args, list | tuple):
        return [w for v in args for w in secret_arguments(v, secrets, at)]
    return []


def decide(
    tool: str,
    args: dict[str, Any],
    policy: Policy = DEFAULT_POLICY,
    *,
    extra_paths: Iterable[tuple[str, str]] = (),
    secrets: Sequence[str] = (),
    **kw: Any,
) -> Verdict:
    """The verdict for a job step's request (its recorded arguments), plus the
    paths its plan would touch (`extra_paths`, (access, path) pairs); a
    request whose arguments hold one of `secrets` is denied."""
    verdict = _decide_args(tool, args, policy, extra_paths, **kw)
    where = secret_arguments(args, secrets) if secrets else []
    if not where:
        return verdict
    found = Match(
        "secret-in-arguments",
        Decision.DENY,
        f"the request's {', '.join(dict.fromkeys(where))} holds a secret value this service "
        "knows (shown masked); a secret never goes into a tool's arguments: name it instead "
        "(the secret store reads it where it is needed), or remove it from the step",
    )
    return _verdict([found, *verdict.matches], elevated=False)


def _decide_args(
    tool: str,
    args: dict[str, Any],
    policy: Policy,
    extra_paths: Iterable[tuple[str, str]],
    **kw: Any,
) -> Verdict:
    paths: list[tuple[str, str]] = list(extra_paths)
    if tool in ("write", "delete") and "path" in args:
        paths.append(("write", str(args["path"])))
    if tool in ("read", "list") and "path" in args:
        paths.append(("read", str(args["path"])))
    if tool in NETWORK_TOOLS:
        target = args.get("url")
        return decide_request(
            tool, policy, paths=paths, url=str(target) if target is not None else None, **kw
        )
    if tool == "shell":
        command = args.get("command")
        argv = command if isinstance(command, list) else None
        line = command if isinstance(command, str) else None
        return decide_request(
            tool, policy, command=line, argv=argv, paths=paths, cwd=str(args.get("cwd", ".")), **kw
        )
    return decide_request(tool, policy, paths=paths, **kw)
