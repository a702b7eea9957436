"""Shell command analysis: every program a command line would run, and how.

Pure: text in, an `Analysis` out; no I/O, no environment. The parser is
tree-sitter-bash (bashlex raises on `$(( ))`, `[[ ]]` and `case`, which would
deny ordinary commands; see shared/FACTS.md). Every `command` node anywhere in
the tree is found (pipelines, lists, subshells, brace groups, command and
process substitution, here-docs, functions, loops), and the wrappers that run
another program are unwrapped: `sh -c`/`bash -c` (parsed again), `env`,
`nice`, `nohup`, `setsid`, `timeout`, `time`, `stdbuf`, `ionice`, `command`,
`builtin`, `exec`, `xargs` and `find -exec`.

What cannot be judged is a `Refusal`, and policy denies any command that has
one: a syntax error, a program name built at run time (`$CMD`, `$(...)`,
globs, brace expansion, `$'..'`), `eval`, a shell or interpreter reading code
from a pipe or here-doc, environment overrides that change what runs
(`PATH=`, `LD_PRELOAD=`, `BASH_ENV=`...), text bash evaluates a second time
(`orchestrator.guard.shell_eval`: arithmetic and subscripts, `${x@P}`,
here-document bodies), a login or interactive shell in a line that sets
HOME/ENV/ZDOTDIR..., a line over `MAX_BYTES`, and nesting deeper than
`MAX_DEPTH` wrappers or `MAX_NESTING` substitutions.

Text is read as bash reads it: backslash-newline is joined first
(`shell_eval.join_continuations`); when that changes the text, the line as
written is analysed too and both sets of programs are kept. The walk over a
tree is a loop (a chain of 1,000 `&&` is one level); only substitutions
inside words nest, up to `MAX_NESTING`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import tree_sitter_bash
from tree_sitter import Language, Parser

from orchestrator.guard.shell_eval import (
    STARTUP_VARS,
    join_continuations,
    reads_startup,
    startup_names,
    tree_problems,
    word_problem,
)
from orchestrator.guard.shell_model import (
    DANGEROUS_ENV,
    INTERPRETERS,
    MAX_BYTES,
    MAX_DEPTH,
    MAX_NESTING,
    RESERVED,
    SHELLS,
    STORED_CODE,
    Acc,
    Analysis,
    Invocation,
    Redirect,
    Refusal,
)
from orchestrator.guard.shell_words import Word, word

__all__ = [
    "Analysis",
    "Invocation",
    "Redirect",
    "Refusal",
    "analyze",
    "analyze_argv",
    "SHELLS",
    "INTERPRETERS",
    "DANGEROUS_ENV",
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_NESTING",
]

# -- parsing -------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _parser() -> Any:
    return Parser(Language(tree_sitter_bash.language()))


def analyze(command: str) -> Analysis:
    """Every program `command` would run, parsed as bash."""
    acc = Acc()
    try:
        _analyze_text(command, acc, via=(), depth=0, stdin="inherit")
    except RecursionError:
        acc.refuse("too-deep", "the command nests deeper than the analysis follows")
    _startup(acc)
    return Analysis(command, tuple(acc.invocations), tuple(acc.redirects), tuple(acc.refusals))


def _startup(acc: Acc) -> None:
    if acc.startup_shell and acc.startup_vars:
        names = ", ".join(sorted(acc.startup_vars))
        acc.refuse(
            "startup-env",
            f"`{acc.startup_shell}` starts a shell that reads startup files (login, "
            f"interactive, or one that always does), and the command sets {names}, "
            "which chooses the files it reads; drop the assignment (the sandbox "
            "gives every shell a throwaway HOME) or run the shell with -c only",
        )


def analyze_argv(argv: Sequence[str]) -> Analysis:
    """An argv run without a shell (a job's shell step): one invocation,
    unwrapped like any other (so `sh -c '...'` inside it is still parsed)."""
    acc = Acc()
    if not argv:
        acc.refuse("unparseable", "the command is empty")
    elif _too_long(" ".join(argv), acc):
        pass
    else:
        try:
            _emit([Word(a) for a in argv], acc, via=(), depth=0, stdin="inherit", env=())
        except RecursionError:
            acc.refuse("too-deep", "the command nests deeper than the analysis follows")
        _startup(acc)
    return Analysis(
        shlex.join(argv), tuple(acc.invocations), tuple(acc.redirects), tuple(acc.refusals)
    )


def _analyze_text(text: str, acc: Acc, *, via: tuple[str, ...], depth: int, stdin: str) -> None:
    if depth > MAX_DEPTH:
        acc.refuse("too-deep", f"commands nested more than {MAX_DEPTH} levels deep")
        return
    if _too_long(text, acc):
        return
    if "\x00" in text:
        acc.refuse("unparseable", "the command contains a NUL byte")
        return
    joined = join_continuations(text)
    if joined != text:
        # What bash reads, and (in case the join misread a quote) the line as
        # written: every program either finds is kept.
        _parse_and_walk(joined, acc, via=via, depth=depth, stdin=stdin)
        written = Acc(level=acc.level)
        _parse_and_walk(text, written, via=via, depth=depth, stdin=stdin)
        acc.merge(written, unparseable=False)
        return
    _parse_and_walk(text, acc, via=via, depth=depth, stdin=stdin)


def _too_long(text: str, acc: Acc) -> bool:
    if len(text) <= MAX_BYTES // 4 or len(text.encode(errors="replace")) <= MAX_BYTES:
        return False
    acc.refuse(
        "too-long",
        f"the command is longer than {MAX_BYTES // 1024} KiB, more than the "
        "analysis reads; put it in a script in the workspace and run that",
    )
    return True


def _parse_and_walk(text: str, acc: Acc, *, via: tuple[str, ...], depth: int, stdin: str) -> None:
    tree = _parser().parse(text.encode())
    root = tree.root_node
    if root.has_error:
        acc.refuse(
            "unparseable",
            f"bash syntax error near {_error_excerpt(root)!r}; "
            "the command cannot be judged, so it is not run",
        )
        return
    for rule, detail in tree_problems(root):
        acc.refuse(rule, detail)
    _walk(root, acc, via=via, depth=depth, stdin=stdin)


def _error_excerpt(node: Any) -> str:
    stack = [node]
    while stack:
        n = stack.pop()
        if n.type == "ERROR" or n.is_missing:
            return n.text.decode(errors="replace")[:60] or n.parent.text.decode()[:60]
        stack.extend(reversed(n.children))
    return node.text.decode(errors="replace")[:60]


# -- the tree ----------------------------------------------------------------------------


_REDIRECTS = ("file_redirect", "heredoc_redirect", "herestring_redirect")


def _walk(node: Any, acc: Acc, *, via: tuple[str, ...], depth: int, stdin: str) -> None:
    """Every command under `node`, in order. A loop over the tree (lists,
    pipelines, compound statements); it recurses only for substitutions and
    values inside a command's words, at most `MAX_NESTING` deep."""
    if acc.level >= MAX_NESTING:
        acc.refuse(
            "too-deep",
            f"substitutions nested more than {MAX_NESTING} levels deep; split the command",
        )
        return
    acc.level += 1
    try:
        stack: list[tuple[Any, str]] = [(node, stdin)]
        while stack:
            n, sin = stack.pop()
            stack += reversed(_step(n, acc, via=via, depth=depth, stdin=sin))
    finally:
        acc.level -= 1


def _step(
    node: Any, acc: Acc, *, via: tuple[str, ...], depth: int, stdin: str
) -> list[tuple[Any, str]]:
    """Handle one node; returns the children still to walk, with their stdin."""
    t = node.type
    if t == "command":
        _command(node, acc, via=via, depth=depth, stdin=stdin)
        return []
    if t == "pipeline":
        stages = [c for c in node.children if c.is_named]
        return [(c, "pipe" if i else stdin) for i, c in enumerate(stages)]
    if t == "redirected_statement":
        body_stdin = stdin
        for c in node.children_by_field_name("redirect"):
            body_stdin = _redirect(c, acc, via=via, depth=depth) or body_stdin
        return [(c, body_stdin) for c in node.children if c.type not in _REDIRECTS]
    if t in _REDIRECTS:
        _redirect(node, acc, via=via, depth=depth)
        return []
    if t == "variable_assignment":
        _assignment(node, acc, via=via, depth=depth, prefix=False)
        return []
    if t in ("declaration_command", "unset_command"):
        _declared(node, acc)
    return [(c, stdin) for c in node.children if c.child_count]  # a leaf runs nothing


def _declared(node: Any, acc: Acc) -> None:
    """`export HOME`, `unset HOME`, `declare -x 'HOME=.'`: startup variables
    named by a declaration (assignments are seen by `_assignment`)."""
    run: list[str] = []  # tree-sitter splits `H'OM'E=x` into pieces bash joins
    end = -1
    for c in [*node.children, None]:
        if c is None or c.start_byte != end or c.type == "variable_assignment":
            name = re.split(r"[=\[+]", "".join(run), maxsplit=1)[0]
            if name in STARTUP_VARS:
                acc.startup_vars.add(name)
            run = []
        if c is not None:
            if c.type in ("variable_name", "word", "raw_string", "string", "concatenation"):
                run.append(word(c).text)
            end = c.end_byte


def _redirect(node: Any, acc: Acc, *, via: tuple[str, ...], depth: int) -> str | None:
    """Record a redirect; returns the stdin it gives the command, if any."""
    t = node.type
    for c in node.children:  # substitutions inside targets and here-doc bodies
        if c.type in (
            "heredoc_body",
            "string",
            "concatenation",
            "command_substitution",
            "process_substitution",
            "expansion",
            "simple_expansion",
        ):
            _walk(c, acc, via=via, depth=depth, stdin="inherit")
    if t == "heredoc_redirect":
        return "heredoc"
    if t == "herestring_redirect":
        return "heredoc"
    op = next((c.text.decode() for c in node.children if not c.is_named), "")
    dest = node.child_by_field_name("destination")
    fd = node.child_by_field_name("descriptor")
    target: str | None = None
    if dest is not None:
        w = word(dest)
        target = None if w.dynamic or w.glob else w.text
    acc.redirects.append(Redirect(op, target, fd.text.decode() if fd is not None else None))
    return "file" if op == "<" else None


def _assignment(node: Any, acc: Acc, *, via: tuple[str, ...], depth: int, prefix: bool) -> str:
    name_node = node.child_by_field_name("name")
    name = name_node.text.decode(errors="replace") if name_node is not None else ""
    if name.split("[", 1)[0] in STARTUP_VARS:
        acc.startup_vars.add(name.split("[", 1)[0])
    _walk_dynamic(node, acc, via=via, depth=depth)  # the value and any subscript
    if DANGEROUS_ENV.match(name):
        acc.refuse(
            "env-override",
            f"setting {name} changes which program runs or what it "
            "loads; set it in the step's `env` or the policy instead",
        )
    value = node.child_by_field_name("value")
    if value is not None and STORED_CODE.search(word(value).text) and not word(value).dynamic:
        acc.refuse(
            "stored-code",
            f"the value of {name} holds shell code ($(...), `...` or "
            "${...}) that arithmetic, `declare -i` or a later expansion could run; "
            "run the command directly instead of storing it",
        )
    return name


def _command(node: Any, acc: Acc, *, via: tuple[str, ...], depth: int, stdin: str) -> None:
    env: list[str] = []
    words: list[Word] = []
    stdin_here = stdin
    for i, c in enumerate(node.children):
        field_name = node.field_name_for_child(i)
        if c.type == "variable_assignment":
            env.append(_assignment(c, acc, via=via, depth=depth, prefix=True))
        elif c.type == "command_name":
            inner = c.children[0] if c.children else c
            _walk_dynamic(inner, acc, via=via, depth=depth)
            words.append(word(inner))
        elif field_name == "argument":
            _walk_dynamic(c, acc, via=via, depth=depth)
            words.append(word(c))
        elif c.type in ("file_redirect", "heredoc_redirect", "herestring_redirect"):
            stdin_here = _redirect(c, acc, via=via, depth=depth) or stdin_here
        elif c.is_named and c.type != "comment":
            # Anything else inside a command (tree-sitter accepts `env ( cmd )`,
            # which bash would not): fail closed by judging what it contains.
            _walk(c, acc, via=via, depth=depth, stdin=stdin)
            acc.refuse(
                "unparseable",
                f"unexpected {c.type} inside a command: "
                f"{node.text.decode(errors='replace')[:60]!r}",
            )
    if words:
        _emit(words, acc, via=via, depth=depth, stdin=stdin_here, env=tuple(env))


def _walk_dynamic(node: Any, acc: Acc, *, via: tuple[str, ...], depth: int) -> None:
    """Commands hidden inside a word: `$(...)`, backticks, `<(...)`."""
    stack = [node]
    while stack:
        n = stack.pop()
        if n.type in ("command_substitution", "process_substitution"):
            for c in n.children:
                _walk(c, acc, via=via, depth=depth, stdin="inherit")
            continue
        stack.extend(reversed(n.children))


# -- unwrapping ---------------------------------------------------------------------------


def _emit(
    words: list[Word],
    acc: Acc,
    *,
    via: tuple[str, ...],
    depth: int,
    stdin: str,
    env: tuple[str, ...],
) -> None:
    if depth > MAX_DEPTH:
        acc.refuse("too-deep", f"commands nested more than {MAX_DEPTH} levels deep")
        return
    head = words[0]
    if head.dynamic or head.glob or not head.text or head.text.startswith("~"):
        acc.refuse(
            "dynamic-program",
            f"the program name {head.text!r} is only known at run "
            "time (a variable, substitution, glob or brace expansion); write the "
            "program's name literally",
        )
        return
    if head.text in RESERVED:
        acc.refuse(
            "unparseable",
            f"{head.text!r} is a shell reserved word, not a program; a wrapper cannot run it",
        )
        return
    inv = Invocation(
        tuple(w.text for w in words),
        via=via,
        dynamic=frozenset(i for i, w in enumerate(words) if w.dynamic),
        globbed=frozenset(i for i, w in enumerate(words) if w.glob),
        stdin=stdin,
        env=env,
    )
    acc.invocations.append(inv)
    name = inv.name
    problem = word_problem(name, words)
    if problem is not None:
        acc.refuse(*problem)
    acc.startup_vars.update(startup_names(name, words))
    if name in SHELLS and reads_startup(name, words, login=False):
        acc.startup_shell = acc.startup_shell or inv.text()[:60]
    if name == "eval":
        acc.refuse("eval", "`eval` runs a string built at run time; run the command directly")
        return
    handler = _WRAPPERS.get(name)
    if handler is not None:
        handler(inv, words, acc, depth)
    elif name in SHELLS:
        _shell(inv, words, acc, depth)
    elif name in INTERPRETERS:
        _interpreter(inv, words, acc)


def _rest(
    inv: Invocation,
    words: list[Word],
    start: int,
    acc: Acc,
    depth: int,
    *,
    stdin: str | None = None,
    dynamic_args: bool = False,
) -> None:
    """Analyze words[start:] as the command a wrapper runs."""
    if start >= len(words):
        return
    inner = words[start:]
    if dynamic_args:
        inner = [*inner, Word("{}", dynamic=True)]
    _emit(
        inner,
        acc,
        via=(*inv.via, inv.name),
        depth=depth + 1,
        stdin=stdin if stdin is not None else inv.stdin,
        env=(),
    )


def _skip_options(
    words: list[Word],
    start: int,
    with_value: frozenset[str],
    flags: frozenset[str] = frozenset(),
    *,
    stop_at_first: bool = True,
    long_with_value: frozenset[str] = frozenset(),
) -> int:
    """Index of the first non-option word (the wrapped command)."""
    i = start
    while i < len(words):
        w = words[i].text
        if w == "--":
            return i + 1
        if not w.startswith("-") or w == "-":
            return i
        if w in with_value:
            i += 2
            continue
        if w.startswith("--") and "=" not in w and w in long_with_value:
            i += 2
            continue
        i += 1
    return i


def _env(inv: Invocation, words: list[Word], acc: Acc, depth: int) -> None:
    i = 1
    while i < len(words):
        w = words[i].text
        if w in ("-u", "--unset", "-C", "--chdir"):
            i += 2
        elif w in ("-S", "--split-string") or w.startswith(("-S", "--split-string=")):
            acc.refuse(
                "dynamic-shell-code",
                "`env -S` splits a string into a command; write the command without it",
            )
            return
        elif w == "--":
            i += 1
            break
        elif w.startswith("-") and w != "-":
            i += 1
        elif "=" in w and not w.startswith("="):
            name = w.split("=", 1)[0]
            if DANGEROUS_ENV.match(name):
                acc.refuse(
                    "env-override",
                    f"`env {name}=...` changes which program runs or "
                    "what it loads; set it in the step's `env` or the policy instead",
                )
            i += 1
        else:
            break
    _rest(inv, words, i, acc, depth)


def _simple(
    with_value: frozenset[str], positional: int = 0
) -> Callable[[Invocation, list[Word], Acc, int], None]:
    """A wrapper `NAME [options] [N positional args] COMMAND...`."""

    def handler(inv: Invocation, words: list[Word], acc: Acc, depth: int) -> None:
        i = _skip_options(words, 1, with_value)
        _rest(inv, words, i + positional, acc, depth)

    return handler


def _xargs(inv: Invocation, words: list[Word], acc: Acc, depth: int) -> None:
    with_value = frozenset(
        {
            "-a",
            "-d",
            "-E",
            "-I",
            "-L",
            "-n",
            "-P",
            "-s",
            "--arg-file",
            "--delimiter",
            "--eof",
            "--replace",
            "--max-lines",
            "--max-args",
            "--max-procs",
            "--max-chars",
            "--process-slot-var",
        }
    )
    i = _skip_options(words, 1, with_value, long_with_value=with_value)
    if i >= len(words):  # xargs alone runs echo
        words = [*words, Word("echo")]
    _rest(inv, words, i, acc, depth, stdin="inherit", dynamic_args=True)


_FIND_EXEC = frozenset({"-exec", "-execdir", "-ok", "-okdir"})


def _find(inv: Invocation, words: list[Word], acc: Acc, depth: int) -> None:
    i = 1
    while i < len(words):
        if words[i].text in _FIND_EXEC:
            j = i + 1
            while j < len(words) and words[j].text not in (";", "+"):
                j += 1
            inner = [w if w.text != "{}" else Word("{}", dynamic=True) for w in words[i + 1 : j]]
            if inner:
                _emit(
                    inner, acc, via=(*inv.via, inv.name), depth=depth + 1, stdin="inherit", env=()
                )
            i = j + 1
        else:
            i += 1


def _shell(inv: Invocation, words: list[Word], acc: Acc, depth: int) -> None:
    """`sh -c CODE` is parsed again; a shell reading code from a pipe is refused."""
    i, code_at, reads_stdin = 1, None, False
    while i < len(words):
        w = words[i].text
        if w in ("-o", "+o", "-O", "+O", "--rcfile", "--init-file"):
            i += 2
            continue
        if w == "--":
            i += 1
            break
        if w.startswith(("-", "+")) and len(w) > 1 and not w.startswith("--"):
            if "c" in w[1:]:
                code_at = i + 1
            if "s" in w[1:]:
                reads_stdin = True
            i += 1
            continue
        if w.startswith("--"):
            i += 1
            continue
        break
    if code_at is not None:
        if code_at >= len(words):
            acc.refuse("unparseable", f"`{inv.name} -c` without a command string")
            return
        code = words[code_at]
        if code.dynamic:
            acc.refuse(
                "dynamic-shell-code",
                f"`{inv.name} -c` runs code built at run time "
                f"({code.text!r}); write the command literally",
            )
            return
        _analyze_text(code.text, acc, via=(*inv.via, inv.name), depth=depth + 1, stdin=inv.stdin)
        return
    script = i < len(words) and not reads_stdin
    if script and words[i].dynamic:
        acc.refuse(
            "dynamic-shell-code",
            f"`{inv.name}` would run a script whose name is only "
            "known at run time; name the script literally",
        )
        return
    if not script and inv.stdin in ("pipe", "heredoc", "file"):
        acc.refuse(
            "code-from-stdin",
            f"`{inv.name}` would run code read from its input "
            f"({inv.stdin}); code that arrives through a pipe cannot be judged. "
            "Save it as a script in the workspace and run that",
        )


def _interpreter(inv: Invocation, words: list[Word], acc: Acc) -> None:
    args = [w.text for w in words[1:]]
    inline = any(
        a in ("-c", "-e", "-E", "--eval", "-r") or a.startswith(("-c", "-e")) for a in args
    )
    positional = [a for a in args if not a.startswith("-")]
    from_stdin = not inline and (not positional or "-" in args)
    if from_stdin and inv.stdin in ("pipe", "heredoc", "file"):
        acc.refuse(
            "code-from-stdin",
            f"`{inv.name}` would run code read from its input "
            f"({inv.stdin}); save it as a script in the workspace and run that",
        )


def _exec(inv: Invocation, words: list[Word], acc: Acc, depth: int) -> None:
    """`exec [-cl] [-a NAME] COMMAND`: -l, or a NAME starting with `-`,
    starts a shell as a login shell."""
    i, login = 1, False
    while i < len(words):
        w = words[i].text
        if w == "--":
            i += 1
            break
        if w == "-a":
            login = login or (i + 1 < len(words) and words[i + 1].literal.startswith("-"))
            i += 2
            continue
        if not w.startswith("-") or w == "-":
            break
        login = login or "l" in w
        i += 1
    if i < len(words) and login and words[i].text.rsplit("/", 1)[-1] in SHELLS:
        acc.startup_shell = acc.startup_shell or inv.text()[:60]
    _rest(inv, words, i, acc, depth)


def _watch(inv: Invocation, words: list[Word], acc: Acc, depth: int) -> None:
    """`watch` hands its arguments, joined, to `sh -c`."""
    i = _skip_options(words, 1, frozenset({"-n", "--interval", "-d", "--differences"}))
    if i < len(words):
        if any(w.dynamic for w in words[i:]):
            acc.refuse("dynamic-shell-code", "`watch` runs code built at run time")
            return
        _analyze_text(
            " ".join(w.text for w in words[i:]),
            acc,
            via=(*inv.via, inv.name),
            depth=depth + 1,
            stdin="inherit",
        )


_NONE: frozenset[str] = frozenset()
_WRAPPERS: dict[str, Callable[[Invocation, list[Word], Acc, int], None]] = {
    "env": _env,
    "nice": _simple(frozenset({"-n", "--adjustment"})),
    "nohup": _simple(_NONE),
    "setsid": _simple(_NONE),
    "timeout": _simple(frozenset({"-s", "--signal", "-k", "--kill-after"}), positional=1),
    "time": _simple(frozenset({"-o", "--output", "-f", "--format"})),
    "stdbuf": _simple(frozenset({"-i", "-o", "-e", "--input", "--output", "--error"})),
    "ionice": _simple(frozenset({"-c", "--class", "-n", "--classdata", "-p", "-P", "-u"})),
    "chrt": _simple(_NONE, positional=1),
    "taskset": _simple(_NONE, positional=1),
    "command": _simple(_NONE),
    "builtin": _simple(_NONE),
    "exec": _exec,
    "xargs": _xargs,
    "find": _find,
    "watch": _watch,
    "flock": _simple(frozenset({"-w", "--timeout", "-E", "--conflict-exit-code"}), positional=1),
}
