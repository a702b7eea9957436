"""What a job spec's text must be before it is parsed at all: no bigger than
`MAX_SPEC_BYTES` (a 30 MB spec took 48 s to accept, holding a worker of the
API the whole time), and, sent as JSON, without duplicate keys (JSON parsers
keep the last value silently; the YAML path already refuses duplicates)."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.errors import SpecError

MAX_SPEC_BYTES = 1024 * 1024  # docs/api.md, docs/operations.md: "job spec size"


def check_size(size: int, source: str) -> None:
    if size > MAX_SPEC_BYTES:
        raise SpecError(
            source,
            [
                f"the spec is {size:,} bytes, more than the {MAX_SPEC_BYTES:,} a job spec may "
                "be; split the job, or move long content (patches, scripts) into the target"
            ],
        )


def json_duplicate_keys(raw: bytes | str) -> list[str]:
    """Each key a JSON object names twice, as `path.to.key` (lists as [i])."""
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                found.append(key)
            seen[key] = value
        return seen

    json.loads(raw, object_pairs_hook=pairs)
    return [
        f"duplicate key {key!r}: JSON keeps only the last value, so remove or rename one"
        for key in dict.fromkeys(found)
    ]
