"""Where bash evaluates text a second time, and how bash joins lines: what the
tree-sitter parse alone does not show. Pure; `orchestrator.guard.commands`
calls it for every tree it parses.

- Line continuations: bash drops backslash-newline before it reads a line,
  outside single quotes and comments, so `"$\\` + newline + `(id)"` is a
  substitution bash runs. `join_continuations` gives the text bash reads.
- Arithmetic and subscripts: `$((..))`, `((..))`, `for ((..))`, `${x:off:len}`,
  `${x[sub]}`, `a[sub]=`, `[[ a -eq b ]]`, `-v NAME`, and the builtins that
  take a variable name or a number (`printf -v`, `read`, `declare`..., `unset`,
  `let`, `mapfile`, `wait -p`, `getopts`...) evaluate their text, and with it
  any `$(...)` it holds, even one quoted in the line. Such text with a `$` or
  a backtick that is not an expansion the analysis sees is refused.
- `${x@P}` expands a value as a prompt, running the substitutions it holds.
- An unquoted here-document is expanded like a double-quoted string: a `$(`
  or backtick in its body that the parse did not see as one is refused.
- Startup files: a login or interactive shell (and zsh, fish, csh always)
  reads files named by HOME, ENV, ZDOTDIR, XDG_CONFIG_HOME...; a line that
  starts one may not set those.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from orchestrator.guard.shell_words import Word

# Builtins whose arguments (names, subscripts, numbers) bash evaluates as
# arithmetic. `printf` only with -v, `wait` only with -p, `test` with -v/-R
# or a numeric comparison.
ARITH_BUILTINS = frozenset(
    {
        "read",
        "let",
        "mapfile",
        "readarray",
        "getopts",
        "shift",
        "return",
        "exit",
        "ulimit",
        "declare",
        "typeset",
        "local",
        "export",
        "readonly",
        "unset",
    }
)
_WORD_CHECKED = ARITH_BUILTINS | {"printf", "wait", "test", "[", "env"}
TEST_ARITH_OPS = frozenset({"-v", "-R", "-eq", "-ne", "-lt", "-le", "-gt", "-ge"})
# Variables that name the files a starting shell reads.
STARTUP_VARS = frozenset(
    {
        "HOME",
        "ENV",
        "BASH_ENV",
        "ZDOTDIR",
        "XDG_CONFIG_HOME",
        "XDG_CONFIG_DIRS",
        "INPUTRC",
        "USER",
        "LOGNAME",
    }
)
# Shells that read startup files even when started with -c.
ALWAYS_READ_STARTUP = frozenset({"zsh", "fish", "csh", "tcsh"})
_SKIP_SUBTREES = frozenset({"command_substitution", "process_substitution", "simple_expansion"})
_EXPANSION_TOKENS = frozenset({"${", "$((", "$[", "$(", "))", "]", "}", "`"})
_HIDDEN_IN_HEREDOC = re.compile(r"\$[({\[]|`")


def join_continuations(text: str) -> str:
    """`text` with every backslash-newline bash removes taken out: all of
    them outside single quotes, `$'...'` and comments."""
    if "\\\n" not in text:
        return text
    out: list[str] = []
    i, n = 0, len(text)
    quote = ""  # "" | "'" | '"' | "$'" | "#"
    while i < n:
        c = text[i]
        if quote == "'":
            out.append(c)
            quote = "" if c == "'" else quote
            i += 1
            continue
        if quote == "#":
            out.append(c)
            quote = "" if c == "\n" else quote
            i += 1
            continue
        if c == "\\":
            if i + 1 < n and text[i + 1] == "\n":
                i += 2  # bash reads on as if the two were not there
                continue
            out.append(text[i : i + 2])
            i += 2
            continue
        if quote == "$'":
            out.append(c)
            quote = "" if c == "'" else quote
        elif quote == '"':
            out.append(c)
            quote = "" if c == '"' else quote
        elif c == "'":
            quote = "$'" if out and out[-1].endswith("$") else "'"
            out.append(c)
        elif c == '"':
            quote = '"'
            out.append(c)
        elif c == "#" and (not out or out[-1][-1:] in ("", " ", "\t", "\n", ";", "&", "|", "(")):
            quote = "#"
            out.append(c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


def literal_text(node: Any) -> str:
    """The text of `node` that bash evaluates as written: everything but the
    expansions the parse found (`$x`, `$(...)`, the `${`/`$((` tokens)."""
    parts: list[str] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if n.type in _SKIP_SUBTREES:
            continue
        if n.child_count == 0:
            if n.is_named or n.type not in _EXPANSION_TOKENS:
                parts.append(n.text.decode(errors="replace"))
            continue
        stack.extend(reversed(n.children))
    return " ".join(parts)


def has_code(text: str) -> bool:
    return "$" in text or "`" in text


def _arith_children(node: Any) -> Iterator[Any]:
    """The parts of an evaluating node that bash evaluates."""
    t = node.type
    if t in ("arithmetic_expansion", "subscript"):
        yield node
    elif t in ("declaration_command", "unset_command"):
        # names and `'a[..]=v'` words; an assignment's subscript is a
        # `subscript` node of its own, its value is `stored-code`'s
        yield from (c for c in node.children if c.type != "variable_assignment")
    elif t == "compound_statement":
        if node.child_count and node.children[0].type == "((":
            yield node
    elif t == "c_style_for_statement":
        for c in node.children:
            if c.type == "do_group" or c.type == "compound_statement":
                break
            yield c
    elif t == "test_command":
        if any(c.type == "test_operator" and c.text.decode() in TEST_ARITH_OPS for c in _all(node)):
            yield node
    elif t == "expansion":
        after_colon = False
        for c in node.children:
            if after_colon and c.type != "}":
                yield c
            if c.type == ":":
                after_colon = True
    elif t == "array":  # a=([sub]=value ...): the subscripts
        for c in node.children:
            if c.text.startswith(b"["):
                yield c


def _all(node: Any) -> Iterator[Any]:
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(n.children)


_EVALUATING = frozenset(
    {
        "arithmetic_expansion",
        "subscript",
        "declaration_command",
        "unset_command",
        "compound_statement",
        "c_style_for_statement",
        "test_command",
        "expansion",
        "array",
        "heredoc_redirect",
    }
)


def tree_problems(root: Any) -> list[tuple[str, str]]:
    """(rule, detail) for every place in a parsed tree where bash evaluates
    text the analysis cannot see into."""
    out: list[tuple[str, str]] = []
    stack = [root]
    while stack:
        node = stack.pop()
        stack.extend(c for c in node.children if c.child_count)
        t = node.type
        if t not in _EVALUATING:
            continue
        if t == "expansion" and node.text.endswith(b"@P}"):
            out.append(
                (
                    "prompt-expansion",
                    f"`{node.text.decode(errors='replace')[:40]}` expands a value as a "
                    "prompt string, which runs the substitutions it holds; "
                    "print the value instead",
                )
            )
        elif t == "heredoc_redirect":
            out += _heredoc(node)
        for part in _arith_children(node):
            lit = literal_text(part)
            if has_code(lit):
                out.append(_arith_problem(part.text.decode(errors="replace")))
                break
    return out


def _arith_problem(shown: str) -> tuple[str, str]:
    return (
        "arith-code",
        f"{shown[:60]!r} reaches arithmetic or an array subscript, where bash "
        "evaluates a quoted `$(...)`, backtick or `$` again; write the number or "
        "name plainly, or compute it in a separate command",
    )


def _heredoc(node: Any) -> list[tuple[str, str]]:
    start = node.child_by_field_name("start") or next(
        (c for c in node.children if c.type == "heredoc_start"), None
    )
    if start is None or any(q in start.text for q in (b"'", b'"', b"\\")):
        return []  # a quoted delimiter: the body is literal
    for body in (c for c in node.children if c.type == "heredoc_body"):
        raw = bytearray(body.text)
        base = body.start_byte
        for c in body.children:
            if c.text.startswith((b"$((", b"$[")) and _HIDDEN_IN_HEREDOC.search(
                c.text.decode(errors="replace")[2:]
            ):
                # `$((..))` in a body is arithmetic, where quotes are literal;
                # tree-sitter reads it as `$(` and a subshell
                return [_arith_problem(c.text.decode(errors="replace"))]
            if c.type != "heredoc_content":
                raw[c.start_byte - base : c.end_byte - base] = b" " * (c.end_byte - c.start_byte)
        text = _unescape(raw.decode(errors="replace"))
        if _HIDDEN_IN_HEREDOC.search(text):
            return [
                (
                    "heredoc-code",
                    "the here-document's body holds a `$(`, `${` or backtick that bash "
                    "expands but the analysis cannot read; quote the delimiter (<<'EOF') "
                    "to keep the body literal",
                )
            ]
    return []


def _unescape(text: str) -> str:
    """A here-document body as bash expands it: backslash-newline joined,
    `\\$`, `` \\` `` and `\\\\` literal (made `_`, which starts nothing)."""
    return _BODY_ESCAPE.sub(lambda m: "" if m.group(1) == "\n" else "_", text)


_BODY_ESCAPE = re.compile(r"\\([$`\\\n])")


def word_problem(name: str, words: Sequence[Word]) -> tuple[str, str] | None:
    """A builtin run with words bash evaluates as arithmetic (the same rule
    for `builtin let ...`, `command read ...` as for the tree)."""
    if name not in _WORD_CHECKED:
        return None
    args = words[1:]
    texts = [w.text for w in args]
    evaluating: Sequence[Word] = ()
    if name in ARITH_BUILTINS:
        evaluating = args
    elif name == "printf" and any(t == "-v" or t.startswith("-v") for t in texts):
        evaluating = args
    elif name == "wait" and any(t.startswith("-") and "p" in t for t in texts):
        evaluating = args
    elif name in ("test", "[") and TEST_ARITH_OPS.intersection(texts):
        evaluating = args
    for w in evaluating:
        if has_code(w.literal):
            return _arith_problem(w.text)
    return None


def reads_startup(name: str, words: Sequence[Word], login: bool) -> bool:
    """Whether this shell reads startup files: login or interactive, or a
    shell that always does."""
    if name in ALWAYS_READ_STARTUP or login:
        return True
    for w in words[1:]:
        t = w.text
        if t in ("--login", "--interactive", "-l", "-i"):
            return True
        if t.startswith("-") and not t.startswith("--") and ("l" in t or "i" in t):
            return True
        if t == "--" or not t.startswith(("-", "+")):
            return False
    return False


def startup_names(name: str, words: Sequence[Word]) -> list[str]:
    """The startup variables a builtin sets or unsets by name (`read HOME`,
    `printf -v HOME`, `export HOME=...` run through `builtin`...)."""
    if name not in _WORD_CHECKED:
        return []
    found = []
    for w in words[1:]:
        base = re.split(r"[=\[+]", w.text, maxsplit=1)[0]
        if base in STARTUP_VARS:
            found.append(base)
    return found
