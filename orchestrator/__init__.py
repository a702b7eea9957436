"""The orchestration service: config, job specs, tools, policy, runner, CLI."""
