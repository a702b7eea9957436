"""The shell tool: one argv in the sandbox, with the session policy's limits
and network setting. Never effect-free: its effects are unknown until it ran."""

from __future__ import annotations

from orchestrator.run.steps import ShellStep
from orchestrator.tools import shell
from orchestrator.tools.base import Interrupted, Plan, ToolResult
from orchestrator.tools.interface import BaseTool, ToolCall


class ShellTool(BaseTool):
    kind = "shell"

    def effect_free(self, step: ShellStep, planned: Plan) -> bool:
        return False

    def run(self, call: ToolCall, step: ShellStep, planned: Plan | None) -> ToolResult:
        if planned is None and not step.idempotent:
            raise Interrupted(
                "the worker died while this command was running, so its effects are unknown; "
                "inspect the target and resubmit, or mark the step `idempotent: true` to let "
                "a redelivered task run it again"
            )
        pol = call.policy
        return shell.run_shell(
            call.workspace,
            step,
            limits=pol.doc.limits,
            network=pol.doc.network.for_shell,
            policy=pol,
        )
