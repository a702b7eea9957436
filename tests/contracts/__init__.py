"""Contract tests: what the model sees (prompts, tool schemas) and what the
CLI prints as JSON, each pinned by a snapshot (`pytest --snapshot-update`
rewrites them; the diff is the review). See docs/schemas/README.md."""
