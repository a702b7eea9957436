"""sed and awk programs that run programs or write files: sed's e, w and W
commands (and the s command's e/w flags), a sed script read from a file, and
awk's system(), pipes and coprocesses. Allowed programs can do what the
policy would deny when their own script asks for it, so the decision looks
inside the script.

Pure text analysis; it errs on the side of finding more.
"""

from __future__ import annotations

import re

from orchestrator.guard.commands import Invocation

SED_NAMES = frozenset({"sed", "gsed"})
AWK_NAMES = frozenset({"awk", "gawk", "mawk", "nawk"})


def sed_runs_or_writes(inv: Invocation) -> bool:
    """Whether a sed invocation's script executes or writes (e, w, W, s///e,
    s///w), or is read from a file the policy cannot read (-f)."""
    return inv.name in SED_NAMES and (
        any(_script_runs_or_writes(s) for s in _sed_scripts(inv)) or _sed_reads_script(inv)
    )


def awk_runs_programs(inv: Invocation) -> bool:
    """Whether an awk program calls system() or pipes to or from a command."""
    return inv.name in AWK_NAMES and any(_AWK_EXEC.search(a) for a in inv.argv[1:])


# One sed address: a line number (with ~step), $, /regex/ or \cregexc (with
# I/M flags); a range adds another address or +N/~N; then an optional !.
def _sed_address(g: str) -> str:
    return (
        rf"(?:\d+(?:~\d+)?|\$|/(?:\\.|[^/\\\n])*/[IM]*|"
        rf"\\(?P<{g}>\S)(?:\\.|(?!(?P={g})).)*?(?P={g})[IM]*)"
    )


_SED_ADDRESS = re.compile(
    rf"\s*(?:{_sed_address('a')}(?:\s*,\s*(?:{_sed_address('b')}|[+~]\d+))?)?\s*!?\s*", re.S
)
# The s command's flags with w (write) or e (execute); the filename of w may
# follow with or without a space (GNU sed takes `s/a/b/wout`).
_SED_S_FLAGS = re.compile(r"s(.)(?:\\.|(?!\1).)*\1(?:\\.|(?!\1).)*\1[gpiImM0-9]*[ew]", re.S)


def _script_runs_or_writes(script: str) -> bool:
    """Whether a sed script has an e, w or W command, or an s command with the
    w or e flag. Commands are split on ; newline { and }: a split inside a
    regex or a replacement can only find more, so this errs on denying.
    GNU sed takes w's filename straight after it (`1w/tmp/x`), so no space
    is needed after the letter."""
    if _SED_S_FLAGS.search(script):
        return True
    for part in re.split(r"[;\n{}]", script):
        m = _SED_ADDRESS.match(part)
        rest = part[m.end() :] if m else part.lstrip()
        if rest[:1] in ("e", "w", "W"):
            return True
    return False


_AWK_EXEC = re.compile(r"system\s*\(|\|\s*getline|print[^;]*\|\s*\"|\|&")


def _sed_reads_script(inv: Invocation) -> bool:
    """`sed -f FILE`: the script is in a file the policy cannot read."""
    return any(
        a == "--file" or a.startswith("--file=") or re.fullmatch(r"-[nrEsuz]*f.*", a)
        for a in inv.argv[1:]
    )


def _sed_scripts(inv: Invocation) -> list[str]:
    args = list(inv.argv[1:])
    scripts, i, positional = [], 0, []
    while i < len(args):
        a = args[i]
        if a in ("-e", "--expression") and i + 1 < len(args):
            scripts.append(args[i + 1])
            i += 2
            continue
        if a.startswith("--expression="):
            scripts.append(a.split("=", 1)[1])
        elif a.startswith("-e") and len(a) > 2:
            scripts.append(a[2:])
        elif a in ("-f", "--file"):
            i += 2
            continue
        elif not a.startswith("-"):
            positional.append(a)
        i += 1
    if not scripts and positional:
        scripts.append(positional[0])
    return scripts
