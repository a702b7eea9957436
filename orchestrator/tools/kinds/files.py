"""The file tools: read and list (read-only), and the edit tools (write,
patch, delete, replace) that plan their FileEdits before the policy decides,
record their hashes when the call starts and apply them all-or-nothing."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from orchestrator.run.steps import DeleteStep, ListStep, PatchStep, ReadStep, ReplaceStep, WriteStep
from orchestrator.tools import files, replace
from orchestrator.tools.base import FileEdit, Interrupted, Plan, ToolResult, content_hash
from orchestrator.tools.interface import BaseTool, Hidden, ToolCall
from orchestrator.tools.patch_links import link_target


class ReadTool(BaseTool):
    kind = "read"

    def paths(self, step: ReadStep, planned: Plan | None) -> tuple[list[str], list[str]]:
        return [step.path], super().paths(step, planned)[1]

    def run(self, call: ToolCall, step: ReadStep, planned: Plan | None) -> ToolResult:
        return files.read_file(call.workspace, step.path, step.max_output_bytes)


class ListTool(BaseTool):
    kind = "list"

    def paths(self, step: ListStep, planned: Plan | None) -> tuple[list[str], list[str]]:
        return [step.path], super().paths(step, planned)[1]

    def run(self, call: ToolCall, step: ListStep, planned: Plan | None) -> ToolResult:
        return files.list_files(
            call.workspace,
            step.path,
            step.glob,
            step.max_output_bytes,
            call.hidden,
            show_hidden=step.hidden,
            no_ignore=step.no_ignore,
        )


class EditTool(BaseTool):
    """A tool whose effects are the FileEdits it planned. A call with no
    edits has nothing to protect; one with edits is recorded before it runs,
    so a redelivery after a crash can finish exactly what was planned."""

    def effect_free(self, step: Any, planned: Plan) -> bool:
        return not planned.edits

    def summary(self, changed: int, count: int) -> str:
        return f"{changed} file(s) changed"

    def run(self, call: ToolCall, step: Any, planned: Plan | None) -> ToolResult:
        """`planned` is None when this task is a redelivery that found the call
        started by a worker that died: the recorded plan is resumed."""
        start = time.monotonic()
        s = call.session
        edits = planned.edits if planned is not None else self._resume(call, step)
        files.apply_edits(call.workspace, edits)
        recorded = s.call(call.call_id)
        if planned is not None:
            count, changed = planned.count, len(edits)
        else:
            count = recorded.planned_count if recorded else 0
            changed = len([c for c in s.pending if c.call_id == call.call_id])
        return ToolResult(
            output=self.summary(changed, count),
            count=count,
            duration_s=time.monotonic() - start,
            edits=tuple(edits),
        )

    def _resume(self, call: ToolCall, step: Any) -> list[FileEdit]:
        """Edits of an interrupted call still to make. Edits already on disk are
        skipped; the rest are re-planned and must reproduce the recorded after-hash.
        A file matching neither recorded hash was changed by someone else: refuse."""
        workspace = call.workspace
        recorded = [c for c in call.session.pending if c.call_id == call.call_id]
        fresh = (
            {e.path: e for e in self.plan(workspace, step, call.hidden).edits} if recorded else {}
        )
        todo = []
        for c in recorded:
            target = workspace / c.path
            if target.is_symlink():  # a link a patch adds: its content is its target
                current = content_hash(os.fsencode(os.readlink(target)))
            else:
                current = content_hash(target.read_bytes()) if target.is_file() else None
            if current == c.after_hash:
                continue
            edit = fresh.get(c.path)
            if current != c.before_hash or edit is None or edit.after_hash != c.after_hash:
                raise Interrupted(
                    f"{c.path} changed since this call planned its edit (expected "
                    f"content {c.before_hash} or {c.after_hash}, found {current}); "
                    "inspect the target and resubmit the job"
                )
            todo.append(edit)
        return todo


class WriteTool(EditTool):
    kind = "write"

    def plan(self, workspace: Path, step: WriteStep, hidden: Hidden | None) -> Plan:
        edits = files.plan_write(workspace, step)
        return Plan(edits, len(edits))

    def paths(self, step: WriteStep, planned: Plan | None) -> tuple[list[str], list[str]]:
        return [], [*super().paths(step, planned)[1], step.path]


class PatchTool(EditTool):
    kind = "patch"

    def plan(self, workspace: Path, step: PatchStep, hidden: Hidden | None) -> Plan:
        edits = files.plan_patch(workspace, step)
        return Plan(edits, len(edits))

    def paths(self, step: PatchStep, planned: Plan | None) -> tuple[list[str], list[str]]:
        """A new symlink's target is judged as a path the call writes: a link
        to `.env` or `.git/hooks/x` is denied as writing there would be."""
        reads, writes = super().paths(step, planned)
        edits = planned.edits if planned else []
        return reads, writes + [link_target(e.path, e.after) for e in edits if e.link and e.after]


class DeleteTool(EditTool):
    kind = "delete"

    def plan(self, workspace: Path, step: DeleteStep, hidden: Hidden | None) -> Plan:
        edits = files.plan_delete(workspace, step.path)
        return Plan(edits, len(edits))

    def paths(self, step: DeleteStep, planned: Plan | None) -> tuple[list[str], list[str]]:
        return [], [*super().paths(step, planned)[1], step.path]


class ReplaceTool(EditTool):
    kind = "replace"

    def plan(self, workspace: Path, step: ReplaceStep, hidden: Hidden | None) -> Plan:
        edits, count = replace.plan_replace(workspace, step, hidden)
        return Plan(edits, count)

    def summary(self, changed: int, count: int) -> str:
        return f"{changed} file(s) changed, {count} replacement(s)"
