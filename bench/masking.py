"""The masker on real code: how much ordinary text it masks (false positives)
and what it costs per MB, next to detect-secrets scanning the same bytes.

Corpora: the test suites and sources of real projects installed in the
virtualenv (offline: eventsourcing's and jsonschema's test suites,
SQLAlchemy's `testing/` package, requests and celery sources), each cut at
`MB` megabytes of `.py` files. None of them holds a live credential, so every
mask is a false positive, except the fixtures that are credential-shaped on
purpose (a `user:pass@host` URL in a test); the table lists a sample so a
reader can judge.

Contenders, per corpus, interleaved round by round:
- known values only: `mask(text, secrets, patterns=False)` with three random
  secrets (every encoding of each, and the whitespace-stripped pass): the floor;
- ours: `mask(text, secrets)`: the known values plus every credential shape
  (`orchestrator.guard.credentials`: detect-secrets' regex plugins and ours);
- detect-secrets: `scan_line` over every line with its default plugins
  (regex plugins, keyword, high-entropy strings) and heuristic filters: the
  peer whose pattern set we use, as a scanner.

Figures: s/MB (median of the rounds), masked lines per 1,000 lines (ours) and
lines detect-secrets reports per 1,000 lines. Target: ours under 0.5 s/MB and
under 1 masked line per 1,000 lines of ordinary code.
"""

from __future__ import annotations

import secrets as rnd
import statistics
import sys
from pathlib import Path

from bench.common import Options, Result, now, show

SITE = (
    Path(sys.prefix)
    / "lib"
    / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    / "site-packages"
)
CORPORA = {
    "eventsourcing tests": "eventsourcing/tests",
    "jsonschema tests": "jsonschema/tests",
    "sqlalchemy testing": "sqlalchemy/testing",
    "requests": "requests",
    "celery": "celery",
}


def _corpus(rel: str, limit: int) -> str:
    parts, size = [], 0
    for path in sorted((SITE / rel).rglob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        size += len(text)
        if size >= limit:
            break
    return "\n".join(parts)


def run(opts: Options) -> Result:
    from detect_secrets.core.scan import scan_line
    from detect_secrets.settings import default_settings

    from orchestrator.guard.masking import mask

    res = Result("masking")
    limit = 250_000 if opts.quick else 1_000_000
    rounds = 2 if opts.quick else 3
    known = [rnd.token_urlsafe(24) for _ in range(3)]
    corpora = {name: _corpus(rel, limit) for name, rel in CORPORA.items() if (SITE / rel).is_dir()}

    def peer(text: str) -> int:
        with default_settings():
            return sum(1 for line in text.splitlines() if any(True for _ in scan_line(line)))

    contenders = {
        "known values only": lambda t: mask(t, known, patterns=False),
        "ours": lambda t: mask(t, known),
        "detect-secrets": peer,
    }
    for fn in contenders.values():  # warm-up: compile patterns, import plugins
        fn("password = 'warm-up-value'\n")
    times: dict[str, dict[str, list[float]]] = {n: {k: [] for k in contenders} for n in corpora}
    results: dict[str, dict[str, object]] = {}
    for _ in range(rounds):
        for name, text in corpora.items():
            for k, fn in contenders.items():
                t = now()
                results.setdefault(name, {})[k] = fn(text)
                times[name][k].append(now() - t)
    rows, samples, figures = [], [], {}
    total_lines = total_masked = total_peer = 0
    total_mb = 0.0
    worst = 0.0
    for name, text in corpora.items():
        mb = len(text.encode()) / 1e6
        lines = text.splitlines()
        out = str(results[name]["ours"]).splitlines()
        masked = [(a, b) for a, b in zip(lines, out) if a != b]
        flagged = int(results[name]["detect-secrets"])  # type: ignore[call-overload]
        per = {k: statistics.median(v) / mb for k, v in times[name].items()}
        worst = max(worst, per["ours"])
        rows.append(
            (
                name,
                f"{mb:.2f}",
                f"{len(lines):,}",
                f"{per['known values only']:.3f}",
                f"{per['ours']:.3f}",
                f"{per['detect-secrets']:.3f}",
                f"{len(masked)} ({1000 * len(masked) / len(lines):.2f})",
                f"{flagged} ({1000 * flagged / len(lines):.2f})",
            )
        )
        samples += [(name, a.strip()[:70], b.strip()[:70]) for a, b in masked[:4]]
        total_lines += len(lines)
        total_masked += len(masked)
        total_peer += flagged
        total_mb += mb
        figures[name] = {
            "mb": mb,
            "lines": len(lines),
            "s_per_mb": per,
            "masked_lines": len(masked),
            "detect_secrets_lines": flagged,
        }
    show(
        f"[masking] per corpus, median of {rounds} rounds (s/MB; lines, per 1,000 lines)",
        (
            "corpus",
            "MB",
            "lines",
            "known only s/MB",
            "ours s/MB",
            "detect-secrets s/MB",
            "ours: masked lines",
            "detect-secrets: lines",
        ),
        rows,
    )
    show(
        "[masking] sample of what ours masked (before -> after)",
        ("corpus", "line", "masked"),
        samples,
    )
    fp = 1000 * total_masked / max(total_lines, 1)
    res.figures = {"corpora": figures, "masked_per_1000_lines": fp, "mb": total_mb}
    res.target("ours, cost per MB (worst corpus)", "< 0.5 s/MB", f"{worst:.3f} s/MB", worst < 0.5)
    res.target(
        "ours, masked lines of ordinary code",
        "< 1 per 1,000 lines",
        f"{fp:.2f} per 1,000 ({total_masked} of {total_lines:,}; detect-secrets {total_peer})",
        fp < 1,
    )
    res.print_targets()
    return res
