"""The shell tool: one argv in the sandbox, as a transaction.

The command runs against a copy-on-write view of the workspace
(orchestrator.sandbox.view); what it changed comes back as a `Changeset`,
is judged as a whole (orchestrator.guard.changeset), recorded as one
FileChanged per file in the same append as the call's completion, and only
then applied (`commit`, after the runner's append). So:

- a refused changeset is a recorded `PermissionDecided(deny)` with its rule,
  the call fails with exit 3, and nothing reaches the workspace;
- a command that fails (an exit code not in `ok_exit_codes`) is rolled
  back: its writes are discarded with the view, as its ToolCallFailed voids
  any FileChanged;
- what it writes where the workspace's ignore files point (`__pycache__`,
  build output, a venv) is applied but not recorded, as `git diff` does not
  show it either, unless git tracks the file (then `git diff` shows it, and
  the record does too; the whole changeset is judged all the same);
- a worker killed while the command runs leaves the workspace as it was, so
  a redelivered call simply runs again (the runner records the new attempt,
  ToolCallRedelivered). A command with network access may have had outside
  effects: it still needs `idempotent: true` to be run again;
- a worker killed after the completion is stored but before the changeset
  is applied loses nothing: the changeset was kept on disk first
  (orchestrator.sandbox.kept, keyed by the call), and the redelivery, which
  finds the completion in the log, applies what was kept (`commit(call, None)`).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from events import payloads as p
from orchestrator.errors import ToolError
from orchestrator.guard.changeset import Verdict, judge, shell_denials
from orchestrator.ops import logs
from orchestrator.run.steps import ShellStep
from orchestrator.sandbox import from_log, kept
from orchestrator.sandbox import runtime as sandbox
from orchestrator.sandbox.apply import give_exec_bits
from orchestrator.sandbox.changeset import Changeset
from orchestrator.tools import files, shell
from orchestrator.tools.base import Interrupted, Plan
from orchestrator.tools.ignore import ignored
from orchestrator.tools.interface import BaseTool, ToolCall
from orchestrator.tools.shell import ShellResult
from orchestrator.tools.tracked import tracked as git_tracked

_log = logs.get_logger(__name__)
_HIDDEN_LISTED = 100  # PathsHidden and IgnoredFilesChanged name this many; `total` counts all


@dataclass(frozen=True)
class ShellCallResult(ShellResult):
    """A judged shell call: what to record before its completion."""

    decided: p.PermissionDecided | None = None  # the changeset's refusal
    kept: Path | None = None  # where the changeset waits until it is applied
    ignored: tuple[str, ...] = ()  # changed where the ignore files point: listed, not diffed


class ChangesetRefused(ToolError):
    """The command ran, but what it changed may not reach the workspace: the
    policy refused it (exit 3), recorded as PermissionDecided(deny)."""

    exit_code = 3

    def __init__(self, verdict: Verdict, result: ShellCallResult) -> None:
        super().__init__(
            f"denied by rule {verdict.rule_id or 'changeset'}: {verdict.reason}. The command "
            "ran in a copy-on-write view; nothing it changed reached the workspace"
        )
        self.rule_id = verdict.rule_id
        self.result = result


class ShellTool(BaseTool):
    kind = "shell"

    def effect_free(self, step: ShellStep, planned: Plan) -> bool:
        return False

    def run(self, call: ToolCall, step: ShellStep, planned: Plan | None) -> ShellCallResult:
        pol = call.policy
        network = pol.doc.network.for_shell
        if planned is None and getattr(network, "enabled", False) and not step.idempotent:
            # A redelivery: an earlier attempt started and never finished.
            raise Interrupted(
                "the worker died while this command was running with network access, so "
                "it may have had effects outside the workspace (the workspace itself is "
                "untouched); inspect them and resubmit, or mark the step `idempotent: true` "
                "to let a redelivered task run it again"
            )
        ran = shell.run_shell(
            call.workspace,
            step,
            limits=pol.doc.limits,
            network=network,
            policy=pol,
            toolchains=call.toolchains,
            apply=False,
            cancelled=call.cancelled,
        )
        result = ShellCallResult(**vars(ran))
        verdict = self.judge(call, result.changeset)
        if verdict.decision != "allow":
            decided = p.PermissionDecided(
                call_id=call.call_id,
                decision="deny",
                rule_id=verdict.rule_id or "changeset",
                policy_hash=pol.hash,
                reason=verdict.reason,
            )
            raise ChangesetRefused(verdict, replace(result, decided=decided))
        edits = result.changeset.recorded()
        # Left out of the diffs: what an ignored folder holds (caches, build
        # output), as `git diff` leaves it out, not a tracked file there; and
        # git's own folder (a commit's objects, refs, index). Listed instead.
        unrecorded = ignored(call.workspace, [e.path for e in edits])
        unrecorded -= git_tracked(call.workspace, unrecorded) if unrecorded else set()
        unrecorded |= {e.path for e in edits if _in_git_folder(e.path)}
        # Kept before the runner records it, so a crash after that append
        # still finds what to apply.
        held = kept.keep(_base(call), call.call_id, result.changeset) if result.changeset else None
        return replace(
            result,
            edits=tuple(e for e in edits if e.path not in unrecorded),
            kept=held,
            ignored=tuple(sorted(unrecorded)),
        )

    def judge(self, call: ToolCall, changes: Changeset) -> Verdict:
        """The changeset's verdict; deleting tracked files asks, as `rm` does,
        which a changeset cannot do after the fact: it is allowed when the
        call was granted or the session elevated, refused otherwise."""
        deletes = [c.path for c in changes.changes if c.kind == "deleted"]
        tracked = tuple(sorted(git_tracked(call.workspace, deletes))) if deletes else ()
        verdict = judge(changes, shell_denials(call.policy), tracked, str(call.workspace))
        if verdict.decision != "ask":
            return verdict
        answer = call.session.confirmation(call.call_id)
        if call.session.elevated_by is not None or (answer and answer.status == "granted"):
            return Verdict("allow")
        return Verdict(
            "deny",
            verdict.rule_id,
            f"{verdict.reason}. Nothing was applied: run it as a `delete` step, get this "
            "command approved, or pass --allow-destructive",
            verdict.path,
        )

    def record(self, call_id: str, result: Any) -> list[Any]:
        """The changeset's refusal, or one FileChanged per file it changes and
        IgnoredFilesChanged listing what it changed where the ignore files
        point; and PathsHidden when the sandbox hid workspace paths from the
        command."""
        if result is None:
            return []
        hidden = getattr(result, "hidden", ())
        shown: list[Any] = (
            [p.PathsHidden(call_id=call_id, paths=list(hidden[:_HIDDEN_LISTED]), total=len(hidden))]
            if hidden
            else []
        )
        decided = getattr(result, "decided", None)
        if decided is not None:
            return [decided, *shown]
        ignored = getattr(result, "ignored", ())
        if ignored:
            listed = list(ignored[:_HIDDEN_LISTED])
            shown.append(p.IgnoredFilesChanged(call_id=call_id, paths=listed, total=len(ignored)))
        return [
            *(
                p.FileChanged(
                    call_id=call_id,
                    path=e.path,
                    before_hash=e.before_hash,
                    after_hash=e.after_hash,
                    diff=files.unified_diff(e),
                )
                for e in result.edits
            ),
            *shown,
        ]

    def commit(self, call: ToolCall, result: Any) -> None:
        """After the completion is stored: make the recorded changeset real,
        then forget the kept copy. `result` None: a redelivery found the
        completion stored; apply what is still kept (a worker died between
        the append and the apply), idempotently."""
        base = _base(call)
        if result is None:
            _settle(call, base)
            return
        kept.crash_point()
        changes = getattr(result, "changeset", None)
        if changes is not None and changes.changes and not getattr(result, "applied", False):
            sandbox.apply(call.workspace, changes)
        kept.drop(kept.held(base, call.call_id))
        kept.sweep(base)

    def discard(self, call: ToolCall, result: Any) -> None:
        """Another delivery recorded the call's end: this one's changeset is
        not the recorded one, so its kept copy goes."""
        folder = getattr(result, "kept", None)
        if folder is not None:
            kept.drop([folder])


def _in_git_folder(path: str) -> bool:
    """Whether `path` is in a repository's own folder (`.git/`, at any depth)."""
    return ".git" in path.lower().split("/")[:-1]


def _base(call: ToolCall) -> Path:
    return kept.default_base(getattr(call.settings, "state", None))


def _settle(call: ToolCall, base: Path) -> None:
    """Apply the kept changeset whose files are those the log records for
    the call (several deliveries may each have kept one), then drop them all."""
    folders = kept.held(base, call.call_id)
    if not folders:
        _from_log(call, base)
        return
    recorded = {(e.path, e.after_hash) for e in _recorded(call)}
    for folder in folders:
        changes = kept.load(folder)
        made = {(e.path, e.after_hash) for e in changes.recorded()}
        if recorded <= made:
            sandbox.apply(call.workspace, changes)
            kept.drop(folders)
            kept.sweep(base)
            return
    _log.warning(
        "kept changeset does not match the record; left in place",
        call_id=call.call_id,
        folders=[str(f) for f in folders],
    )


def _from_log(call: ToolCall, base: Path) -> None:
    """No kept copy here (another host ran the call, or another state folder):
    finish the recorded changes from the log's diffs (`sandbox.from_log`),
    or refuse, loudly, what it cannot give back."""
    recorded = _recorded(call)
    if not recorded:
        return
    edits = from_log.plan(call.workspace, recorded, f"{base} on {socket.gethostname()}")
    if edits:
        writes = [e for e in edits if e.before_hash != e.after_hash]
        if writes:
            files.apply_edits(call.workspace, writes)
        give_exec_bits(
            call.workspace,
            {e.path: bool(e.mode_after & 0o100) for e in edits if e.mode_after and e.after},
        )
        _log.warning(
            "applied a recorded shell changeset from the log (its kept copy is not here)",
            call_id=call.call_id,
            files=len(edits),
        )


def _recorded(call: ToolCall) -> list[p.FileChanged]:
    """The FileChanged events the log holds for the call."""
    if call.store is None:
        return []
    return [
        e.payload
        for e in call.store.read_stream(call.session.session_id)
        if isinstance(e.payload, p.FileChanged) and e.payload.call_id == call.call_id
    ]
