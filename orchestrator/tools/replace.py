"""The replace tool's planning half: which files a pattern rewrites, and how.

Nothing is written here; `files.apply_edits` does that, all-or-nothing, after
the runner has recorded the plan. Bytes outside the replaced spans are kept
exactly (line endings, BOM, trailing newline), so a file is only re-encoded
where it really changed. Python's `re` is the one engine, with `re.MULTILINE`
so `^` and `$` anchor at lines as they do in search.
"""

from __future__ import annotations

import re
import re._constants as sre_constants  # the parser's node types
import re._parser as sre_parse  # what the stdlib compiles patterns with
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

from orchestrator.config.secrets import known_values
from orchestrator.errors import ToolInputError, ToolTimeout
from orchestrator.guard.masking import MASK
from orchestrator.run.steps import ReplaceStep
from orchestrator.tools.base import FileEdit, ToolResult
from orchestrator.tools.jail import Jail, PathRefused
from orchestrator.tools.paths import iter_files
from orchestrator.tools.search import check_count, compile_pattern
from orchestrator.tools.secret_edits import keep_secrets

__all__ = ["plan_replace", "compile_replace"]


def plan_replace(
    workspace: Path,
    step: ReplaceStep,
    hidden: Callable[[str], bool] | None = None,
    secrets: Sequence[str] | None = None,
) -> tuple[list[FileEdit], int]:
    """Edits for the files that change, and the number of replacements made.
    Only the files ripgrep would walk are read (`iter_files`: an ignored
    `.venv/` or `node_modules/` is left alone unless the step says
    `no_ignore` / `hidden`). Binary files (a NUL byte) and files that are not
    valid UTF-8 are skipped, and so are the files `hidden` says the policy denies.
    Raises CountMismatch before anything is written when `expect` is not met,
    and PathRefused (`hardlink`, before reading it) for a walked file hard-linked
    to one outside the workspace: the runner's policy denies the call by rule.
    A replacement that would put the mask placeholder over a secret of the
    file (`secret_edits`; `secrets`: the known values) is refused."""
    deadline = time.monotonic() + step.timeout_s
    known = known_values() if secrets is None else secrets
    rx, rewrite = compile_replace(step)
    # A cheap byte-level test that rules most files out before decoding them.
    needle = (
        step.pattern.encode("utf-8")
        if step.literal and not step.ignore_case
        else required_literal(rx)
    )
    edits: list[FileEdit] = []
    total = 0
    with Jail(workspace) as jail:  # jail.root: the workspace resolved
        walk = iter_files(
            jail.root, step.glob, hidden, show_hidden=step.hidden, no_ignore=step.no_ignore
        )
        for rel in walk:
            if time.monotonic() > deadline:
                raise ToolTimeout(
                    f"replace ran past its time limit of {step.timeout_s:g} s "
                    "while planning; nothing was changed. Narrow it with `glob`, "
                    "or raise `timeout_s` on the step."
                )
            try:
                data = jail.read(rel)
            except PathRefused as err:
                if err.kind == "hardlink":
                    raise  # the policy denies the call by rule: its content is a file outside
                continue  # swapped for a symlink out since listing
            except (OSError, ToolInputError):
                continue  # vanished since listing
            if data is None:
                continue
            if needle is not None and needle not in data:
                continue
            if b"\0" in data:
                continue  # binary
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                continue  # not text we can rewrite without changing other bytes
            if needle is None and rx.search(text) is None:
                continue
            new, n = rewrite(text)
            total += n
            if MASK in new and MASK in step.replacement:
                new = keep_secrets(rel, text, new, known)
            if new != text:
                edits.append(FileEdit(rel, data, new.encode("utf-8")))
    check_count(
        "replace",
        step.pattern,
        step.expect,
        ToolResult(count=total, edits=tuple(edits)),
        "occurrences",
    )
    return edits, total


def required_literal(rx: re.Pattern[str]) -> bytes | None:
    """Plain text every match of `rx` contains (UTF-8), or None.

    The longest run of literal characters in the pattern's top-level
    sequence (zero-width assertions such as `\\b` do not break a run): a file
    without it has no match, so `bytes.find` rules out most files before they
    are decoded and searched (`\\bgetattr\\(` needs `getattr(`). None when
    the pattern ignores case or has no such run."""
    parsed = _case_sensitive_parse(rx)
    if parsed is None:
        return None
    best, run = "", ""
    for op, arg in parsed.data:
        if op is sre_constants.LITERAL:
            run += chr(arg)
        elif op is not sre_constants.AT:
            best, run = max(best, run, key=len), ""
    best = max(best, run, key=len)
    return best.encode("utf-8") if best else None


def compile_replace(step: ReplaceStep) -> tuple[re.Pattern[str], Callable[[str], tuple[str, int]]]:
    """The step's pattern and its `text -> (new_text, count)` rewriter;
    ToolInputError for an invalid pattern or replacement template."""
    rx = compile_pattern(
        step.pattern, literal=step.literal, ignore_case=step.ignore_case, flags=re.MULTILINE
    )
    return rx, _rewriter(rx, step)


def _rewriter(rx: re.Pattern[str], step: ReplaceStep) -> Callable[[str], tuple[str, int]]:
    """`text -> (new_text, count)`, with the replacement validated up front."""
    if step.literal and not step.ignore_case:
        old, new = step.pattern, step.replacement
        return lambda text: (text.replace(old, new), text.count(old))
    if step.literal:
        # Backslashes are the only special characters of a template.
        template = step.replacement.replace("\\", "\\\\")
    else:
        template = step.replacement
        try:
            rx.sub(template, "")  # parses the template and checks its group references
        except (re.error, IndexError) as err:
            raise ToolInputError(
                f"replacement {template!r} is not a valid template for pattern "
                f"{step.pattern!r}: {err}. Refer only to groups the pattern "
                "has (\\1 or \\g<name>), write a literal backslash as \\\\, "
                "or set `literal: true`."
            ) from err
    lead = _leading_literal(rx)
    if lead is None:
        return lambda text: rx.subn(template, text)
    return _anchored_subn(rx, template, lead)


def _case_sensitive_parse(rx: re.Pattern[str]) -> sre_parse.SubPattern | None:
    """`rx`'s parsed form, or None when it ignores case (no literal shortcut
    holds then) or cannot be parsed again."""
    if rx.flags & re.IGNORECASE:
        return None
    return _parsed(rx.pattern, rx.flags)


@lru_cache(maxsize=256)
def _parsed(pattern: str, flags: int) -> sre_parse.SubPattern | None:
    """The parse of `_case_sensitive_parse`, once per pattern (`re` caches its
    compiled patterns, not this; a job's every step and session asks again).
    Read only: the callers walk it."""
    try:
        parsed = sre_parse.parse(pattern, flags)
    except Exception:  # noqa: BLE001 - no shortcut; `re` compiled it already
        return None
    return None if parsed.state.flags & re.IGNORECASE else parsed


def _leading_literal(rx: re.Pattern[str]) -> str | None:
    """The literal every match of `rx` starts with, when the pattern opens
    with zero-width assertions and then that literal (`\\bgetattr\\(`).

    `re` finds a pattern that opens with a literal by a fast string search,
    but a leading `\\b` or `^` turns that off and it tries a match at every
    position (2.4 s for the batch bench's 1,600 candidate files, against
    0.1 s this way). None when that is not the pattern's shape."""
    parsed = _case_sensitive_parse(rx)
    if parsed is None:
        return None
    ops = list(parsed.data)
    k = 0
    while k < len(ops) and ops[k][0] is sre_constants.AT:
        k += 1
    lead = ""
    while k < len(ops) and ops[k][0] is sre_constants.LITERAL:
        lead += chr(ops[k][1])
        k += 1
    has_assertion = bool(ops) and ops[0][0] is sre_constants.AT
    return lead if lead and has_assertion else None


def _anchored_subn(
    rx: re.Pattern[str], template: str, lead: str
) -> Callable[[str], tuple[str, int]]:
    """`rx.subn(template, text)` for a pattern whose every match starts with
    `lead`: matches are tried only where `lead` occurs, left to right and
    without overlap, as `subn` finds them (`match` at a position sees the
    characters before it, so `\\b` and `^` judge as in a search)."""
    plain = "\\" not in template

    def subn(text: str) -> tuple[str, int]:
        find, match = text.find, rx.match
        parts: list[str] = []
        last = count = 0
        at = find(lead)
        while at >= 0:
            m = match(text, at)
            if m is None:
                at = find(lead, at + 1)
                continue
            parts += (text[last:at], template if plain else m.expand(template))
            last, count = m.end(), count + 1
            at = find(lead, last)
        if not count:
            return text, 0
        parts.append(text[last:])
        return "".join(parts), count

    return subn
