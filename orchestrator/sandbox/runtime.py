"""The sandbox's public face: one import for its callers (`tools.shell`, the
CLI's doctor, the bench). The parts live in modules named after what they
are: `host` (what the machine offers), `plan` (the pure argv/env/limits),
`masks` (denied workspace files, hidden), `view` (the copy-on-write view),
`changeset` (what a call changed), `process` (set up, spawn, sweep),
`apply` (writing an allowed changeset), `describe` (what doctor says).
"""

from orchestrator.sandbox.apply import apply
from orchestrator.sandbox.changeset import Change, Changeset, Kind
from orchestrator.sandbox.describe import describe, migration_note
from orchestrator.sandbox.host import Cgroups, Host, Mode, ViewKind, probe
from orchestrator.sandbox.limits import SandboxLimits
from orchestrator.sandbox.masks import (
    Mask,
    Masker,
    MaskRules,
    empty_file,
    git_format_config,
    mask_args,
    masker,
    workspace_masks,
)
from orchestrator.sandbox.plan import (
    GIT_ENV,
    SANDBOX_HOME,
    Plan,
    Request,
    bwrap_argv,
    forbidden_env,
    plan,
    scrub_env,
    toolchain_path,
)
from orchestrator.sandbox.process import (
    Prepared,
    changes,
    limit_hits,
    prepare,
    spawn,
    view_kind,
    written,
)

__all__ = [
    "Change",
    "Changeset",
    "Kind",
    "SandboxLimits",
    "Host",
    "Cgroups",
    "Request",
    "Plan",
    "plan",
    "scrub_env",
    "bwrap_argv",
    "forbidden_env",
    "toolchain_path",
    "probe",
    "Mode",
    "ViewKind",
    "GIT_ENV",
    "SANDBOX_HOME",
    "Prepared",
    "prepare",
    "spawn",
    "changes",
    "limit_hits",
    "view_kind",
    "written",
    "apply",
    "describe",
    "migration_note",
    "Mask",
    "MaskRules",
    "Masker",
    "masker",
    "mask_args",
    "git_format_config",
    "workspace_masks",
    "empty_file",
]
