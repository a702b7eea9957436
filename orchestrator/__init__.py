"""The orchestration service: config, job specs, tools, policy, runner, CLI."""

from __future__ import annotations

from orchestrator import lazy

# Read when `__version__` is first asked for: importlib.metadata (and the
# email parser it loads) is not worth every command's start-up.
_metadata = lazy.module("importlib.metadata")


def __getattr__(name: str) -> str:
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        # Set from the git tag when the distribution is built (setuptools-scm; docs/releasing.md).
        found: str = _metadata.version("agent-orchestrator")
    except _metadata.PackageNotFoundError:  # a source tree that was never installed
        found = "0.0.0"
    globals()["__version__"] = found
    return found
