"""Tool adapters: what a step does to its target's workspace.

Read-only tools (`search.search`) return a ToolResult. File tools plan first
(`plan_replace`, `plan_write`, `plan_patch` return FileEdits without writing)
so the runner can record the plan, then `apply_edits` makes it all-or-nothing.
`run_shell` runs one argv in the workspace. Every path goes through
`resolve_in_workspace`, which refuses escapes.

The runner does not call these directly: each step kind has one tool object
(`orchestrator.tools.interface.Tool`, in `orchestrator.tools.kinds`) that
plans, names its paths for the policy, runs and records through them, and
`orchestrator.tools.registry.TOOLS` finds it by the step's kind.

`search` here is the module (callers write `search.search(...)`), so the
function is not re-exported under its own name.
"""
