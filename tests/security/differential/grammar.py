"""Shell lines from a small grammar of the bypass classes (issue 16), and
mutations of the adversarial corpus in tests/security/. Seeded: the same seed
gives the same lines.

Every line hides the payload program `id` (or `canary`, run by the startup
files of the tester's box) where an analysis that does not model bash would
miss it; benign programs around it keep the policy from denying the line for
another reason.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

PAYLOAD = "id"
BENIGN = ("ls", "echo hi", "true", "cat README.md", "wc -l x", "pwd", ":")

# A word that bash evaluates as arithmetic or a subscript, hiding `$(id)`.
HIDDEN = (
    "'a[$(id)]'",
    '"a[\\$(id)]"',
    "a\\[\\$\\(id\\)\\]",
    "'a[`id`]'",
    "'x[$(id)]+1'",
    "'a[$( id )]'",
    "'b[${x:-$(id)}]'",
    "'a[$((1+$(id)))]'",
    "'a[\"$(id)\"]'",
)
# Where such a word reaches arithmetic: `W` is replaced by one of HIDDEN.
ARITH = (
    "printf -v W x",
    "printf -v W %s x",
    "read W <<< 1",
    "read -a W <<< 1",
    "read -r W < /dev/null",
    "declare W=1",
    "declare -a W",
    "declare -i W",
    "typeset W=1",
    "f() { local W=1; }; f",
    "export W",
    "readonly W",
    "unset W",
    "unset -v W",
    "let W",
    "let x=W",
    "test -v W",
    "[ -v W ]",
    "[[ -v W ]]",
    "mapfile -t W < /dev/null",
    "readarray W < /dev/null",
    "wait -p W",
    "getopts a W",
    "echo $((W))",
    "((W))",
    "x=(1 2); echo ${x[W]}",
    "x=abc; echo ${x:W}",
    "x=abc; echo ${x:0:W}",
    "[[ W -eq 1 ]]",
    "[[ 1 -lt W ]]",
    "for ((i=W; i<0; i++)); do :; done",
    "a[W]=1",
    "declare -i n; n=W",
    "printf %d W",
    "test W -eq 1",
    "echo $[W]",
    "x=W; echo $((x))",
    "x=W; echo ${!x}",
    "v=W; echo ${v@P}",
    "shift W",
    "return W",
    "exit W",
)
# Expansions that evaluate text: prompt strings, indirection.
PROMPT = (
    "x='$(id)'; echo ${x@P}",
    "x='`id`'; echo \"${x@P}\"",
    "x='\\$(id)'; echo ${x@P}",
    "x='$(id)'; y=x; echo ${!y@P}",
    "PS4='$(id)'; set -x; true",
    "PS1='$(id)' bash -i -c true",
    "PROMPT_COMMAND=id bash -i -c true",
    "x='a[$(id)]'; echo ${!x}",
    "x='$(id)'; echo ${x@E}",
    "x='$(id)'; echo ${x@Q}",
)
# Shells that read startup files, and ways to point them at the working folder.
STARTS = (
    "bash -l -c true",
    "bash --login -c true",
    "bash -i -c true",
    "bash -il -c true",
    "bash -lc true",
    "sh -l -c true",
    "sh -i -c true",
    "exec -l bash -c true",
    "exec -a -bash bash -c true",
    "env bash -l -c true",
    "bash -c 'exec -l bash -c true'",
    "bash -i < /dev/null",
    "sh -c true",
    "bash -c true",
)
POINT = (
    "HOME=/opt/work ",
    "HOME=. ",
    "env HOME=/opt/work ",
    "export HOME=/opt/work; ",
    "declare -x HOME=/opt/work; ",
    "ENV=/opt/work/env.sh ",
    "BASH_ENV=/opt/work/env.sh ",
    "ZDOTDIR=/opt/work ",
    "XDG_CONFIG_HOME=/opt/work/.config ",
    "HOME=$PWD ",
    "cd; HOME=/opt/work ",
    "",
)
# Backslash-newline inside and around substitutions.
CONT = (
    '"$\\\n(id)"',
    "$\\\n(id)",
    '"`\\\nid`"',
    '"$(\\\nid)"',
    "$\\\n{x:-$(id)}",
    '"$\\\n{x:-$(id)}"',
    "i\\\nd",
    '"$\\\n\\\n(id)"',
    "'$\\\n(id)'",
    '"$\\\n((1+2))"',
)
WRAP = (
    "{}",
    "echo {}",
    "x={}",
    "cat <<EOF\n{}\nEOF",
    "sh -c '{}'",
    'bash -c "{}"',
    "( {} )",
    "f() {{ {}; }}; f",
    "if true; then {}; fi",
    "echo $( {} )",
    "true && {}",
    "env {}",
    "command {}",
)
JOIN = ("; ", " && ", " || ", "\n", " | ")


def _arith(r: random.Random) -> str:
    return r.choice(ARITH).replace("W", r.choice(HIDDEN))


def _startup(r: random.Random) -> str:
    return r.choice(POINT) + r.choice(STARTS)


def _cont(r: random.Random) -> str:
    return r.choice(("echo ", "")) + r.choice(CONT)


def _prompt(r: random.Random) -> str:
    return r.choice(PROMPT)


CLASSES = (_arith, _startup, _cont, _prompt)


def _wrap(r: random.Random, core: str) -> str:
    for _ in range(r.choice((0, 0, 1, 1, 2))):
        w = r.choice(WRAP)
        if ("'" in w and "'" in core) or ('"' in w and '"' in core):
            continue
        core = w.replace("{}", core).replace("{{", "{").replace("}}", "}")
    return core


def _join(r: random.Random, core: str) -> str:
    parts = [r.choice(BENIGN) for _ in range(r.choice((0, 0, 1, 2)))]
    parts.insert(r.randrange(len(parts) + 1), core)
    out = parts[0]
    for p in parts[1:]:
        out += r.choice(JOIN) + p
    return out


def mutate(r: random.Random, line: str) -> str:
    """One random edit of a corpus line that keeps it a plausible attack."""
    choice = r.randrange(6)
    if choice == 0 and len(line) > 1:  # a backslash-newline anywhere
        i = r.randrange(1, len(line))
        return line[:i] + "\\\n" + line[i:]
    if choice == 1:  # a hidden substitution in a word that reaches arithmetic
        return _join(r, line + "; " + _arith(r))
    if choice == 2:  # the payload swapped in for a program
        words = line.split(" ")
        words[r.randrange(len(words))] = PAYLOAD
        return " ".join(words)
    if choice == 3:
        return _wrap(r, line)
    if choice == 4:  # quote a stretch
        i, j = sorted(r.sample(range(len(line) + 1), 2)) if len(line) > 1 else (0, len(line))
        q = r.choice(("'", '"'))
        return line[:i] + q + line[i:j] + q + line[j:]
    return r.choice(CLASSES)(r) + r.choice(JOIN) + line


def lines(seed: int, count: int, corpus: list[str]) -> Iterator[str]:
    """`count` lines: three in four from the grammar, one in four a corpus mutation."""
    r = random.Random(seed)
    for _ in range(count):
        if corpus and r.random() < 0.25:
            line = r.choice(corpus)
            for _ in range(r.choice((1, 1, 2))):
                line = mutate(r, line)
        else:
            line = _join(r, _wrap(r, r.choice(CLASSES)(r)))
        if "\x00" not in line:
            yield line
