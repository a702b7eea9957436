"""Per-call limits: a plain value the policy (`limits:`) and the sandbox share.

Its own module so that the policy, which is pure, can name the limits without
importing the process machinery that enforces them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

FILES_DEFAULT = 100_000


class SandboxLimits(BaseModel):
    """Per-call limits: the policy's `limits:` (orchestrator.guard.policy.Limits is
    this model), enforced by the sandbox."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    wall_s: float = Field(default=600.0, gt=0)
    cpu_s: float = Field(default=600.0, gt=0)
    memory_mb: int = Field(default=4096, gt=0)
    processes: int = Field(default=256, gt=0)
    open_files: int = Field(default=1024, gt=0)
    file_size_mb: int = Field(default=512, gt=0)
    output_bytes: int = Field(default=1_000_000, gt=0)
    disk_mb: int = Field(default=4096, gt=0)  # what a call may write into its view, in all
    # Files, folders, links and deletes a call may make in its view: a
    # million empty files hold no bytes but exhaust inodes, the worker's
    # memory when the changeset is read and the log when it is recorded.
    files: int = Field(default=FILES_DEFAULT, gt=0)

    @classmethod
    def of(cls, limits: object | None) -> SandboxLimits:
        """From the policy's limits (or anything with the same fields); None: defaults."""
        if limits is None:
            return cls()
        if isinstance(limits, SandboxLimits):
            return limits
        return cls(**{f: getattr(limits, f) for f in cls.model_fields})
