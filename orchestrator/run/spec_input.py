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


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as parsed, every key kept (a dict would keep the last)."""


def json_duplicates(raw: bytes | str) -> list[tuple[tuple[str | int, ...], str]]:
    """(where, key) for each key a JSON object names twice: where as the keys
    and list indexes leading to it, the key as written. ValueError for text
    that is not JSON."""
    tree = json.loads(raw, object_pairs_hook=_Pairs)
    found: list[tuple[tuple[str | int, ...], str]] = []
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), tree)]
    while stack:
        at, node = stack.pop()
        if isinstance(node, _Pairs):
            seen: set[str] = set()
            for key, value in node:
                if key in seen:
                    found.append(((*at, key), key))
                seen.add(key)
                stack.append(((*at, key), value))
        elif isinstance(node, list):
            stack.extend(((*at, i), item) for i, item in enumerate(node))
    return sorted(dict.fromkeys(found), key=lambda f: field_name(f[0]))


def field_name(loc: tuple[str | int, ...]) -> str:
    """`("steps", 0, "path")` -> `steps[0].path`, as problems name fields."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def duplicate_reason(key: str) -> str:
    return f"duplicate key {key!r}: JSON keeps only the last value, so remove or rename one"


def json_duplicate_keys(raw: bytes | str) -> list[str]:
    """Each key a JSON object names twice, as `path.to.key: duplicate key ...`."""
    return [f"{field_name(loc)}: {duplicate_reason(key)}" for loc, key in json_duplicates(raw)]
