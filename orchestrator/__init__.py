"""The orchestration service: config, job specs, tools, policy, runner, CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    # Set from the git tag when the distribution is built (setuptools-scm; docs/releasing.md).
    __version__ = version("agent-orchestrator")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0"
