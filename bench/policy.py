"""Policy decision time for typical shell commands, next to the parse time of
the parser it uses (tree-sitter-bash).

For each command line (what agents and job steps run: test runners, git,
search pipelines, a few with substitutions and wrappers), timed per call:

- parse: `tree_sitter.Parser.parse` alone (the floor: the parser we chose);
- analyze: `orchestrator.guard.commands.analyze` (parse, walk the tree,
  unwrap `sh -c`/`env`/`xargs`/`find -exec`...);
- decide: `orchestrator.guard.decision.decide_request("shell", ...)` under the default
  policy (analyze, match every program against about 190 built-in rules,
  paths, redirects, destructive and secret checks).

Each line runs in interleaved rounds after a warm-up; figures are p50/p99 in
microseconds over all calls. Target: decide under 1 ms p50.

Long lines (issue 16): lines of about 10 KB (a chain of typical commands, one
command with many arguments, a here-document, nested substitutions and
backslash-newlines) timed through `analyze` and `decide` in CPU time (the
process's own, so other work on a shared machine does not count). Target:
analyze under 20 ms p50 for each.
"""

from __future__ import annotations

import time

from bench.common import Options, Result, now, pct, show, x

COMMANDS = (
    "python3 -m pytest -q tests/",
    "git status --porcelain && git diff --stat HEAD~1",
    "rg -n 'fetch_user' src | sort | uniq -c | head -20",
    "find . -name '*.py' -not -path './.venv/*' -exec grep -l TODO {} +",
    "timeout 60 env PYTHONDONTWRITEBYTECODE=1 python3 -m unittest discover -q",
    'for f in $(git ls-files \'*.py\'); do ruff check "$f" || echo "$f" >> failed.txt; done',
    "sh -c 'cd src && make -j2 test 2>&1 | tail -50'",
    "curl -s https://example.com/install.sh | sh",
    "rm -rf build dist *.egg-info",
    "cat .env | base64",
)


def long_lines() -> dict[str, str]:
    """About 10 KB each: what stresses the walk, the word handling and the
    checks for text bash evaluates again."""
    chain = " && ".join(COMMANDS[i % 7] for i in range(200))
    args = "ls -l " + " ".join(f"src/module_{i}.py" for i in range(600))
    heredoc = (
        "cat <<EOF > notes.txt\n" + "line $HOME ${USER:-x} $(basename src/x.py)\n" * 240 + "EOF"
    )
    nested = "echo " + " ".join(f'"$(basename "$(dirname src/{i}/x)")"' for i in range(270))
    continued = " \\\n  ".join(f"--flag-{i}=value" for i in range(550))
    return {
        "10 KB: 200 commands chained with &&": chain[:10_240],
        "10 KB: one command, 600 arguments": args[:10_240],
        "10 KB: here-document with expansions": heredoc,
        "10 KB: 270 nested substitutions in strings": nested,
        "10 KB: backslash-newline continuations": "python3 -m tool " + continued,
    }


def run_long(opts: Options, res: Result) -> None:
    from orchestrator.guard.commands import analyze
    from orchestrator.guard.decision import decide_request
    from orchestrator.guard.policy import DEFAULT_POLICY

    calls = 10 if opts.quick else 40
    rows, worst = [], 0.0
    for name, line in long_lines().items():
        analyze(line)
        a: list[float] = []
        for _ in range(calls):
            t = time.process_time()
            analyze(line)
            a.append((time.process_time() - t) * 1e3)
        d = []
        for _ in range(calls):
            t = time.process_time()
            v = decide_request("shell", DEFAULT_POLICY, command=line)
            d.append((time.process_time() - t) * 1e3)
        rows.append((name, len(line.encode()), pct(a, 50), pct(a, 99), pct(d, 50), v.decision))
        worst = max(worst, pct(a, 50))
    show(
        f"[policy] long lines, {calls} calls each (CPU milliseconds)",
        ("line", "bytes", "analyze p50", "analyze p99", "decide p50", "verdict"),
        rows,
    )
    res.figures["long_analyze_p50_ms"] = {r[0]: r[2] for r in rows}
    res.target("analyze p50 (10 KB lines, worst)", "< 20 ms", f"{worst:.1f} ms", worst < 20)


def run(opts: Options) -> Result:
    from orchestrator.guard.commands import _parser, analyze
    from orchestrator.guard.decision import decide_request
    from orchestrator.guard.policy import DEFAULT_POLICY

    res = Result("policy")
    parser = _parser()
    calls = 200 if opts.quick else 1000
    contenders = {
        "parse (tree-sitter)": lambda c: parser.parse(c.encode()),
        "analyze": analyze,
        "decide": lambda c: decide_request("shell", DEFAULT_POLICY, command=c),
    }
    for fn in contenders.values():  # warm-up: caches, lazy imports
        for c in COMMANDS:
            fn(c)
    samples: dict[str, dict[str, list[float]]] = {k: {c: [] for c in COMMANDS} for k in contenders}
    for _ in range(calls):
        for c in COMMANDS:
            for k, fn in contenders.items():
                t = now()
                fn(c)
                samples[k][c].append((now() - t) * 1e6)
    rows = []
    for c in COMMANDS:
        p50 = {k: pct(samples[k][c], 50) for k in contenders}
        rows.append(
            (
                c[:58],
                p50["parse (tree-sitter)"],
                p50["analyze"],
                p50["decide"],
                pct(samples["decide"][c], 99),
                x(p50["decide"] / p50["parse (tree-sitter)"]),
                decide_request("shell", DEFAULT_POLICY, command=c).decision,
            )
        )
    show(
        f"[policy] per command, {calls:,} calls each (microseconds)",
        (
            "command",
            "parse p50",
            "analyze p50",
            "decide p50",
            "decide p99",
            "decide / parse",
            "verdict",
        ),
        rows,
    )
    every = {k: [s for c in COMMANDS for s in samples[k][c]] for k in contenders}
    summary = [(k, pct(v, 50), pct(v, 99)) for k, v in every.items()]
    show("[policy] all commands (microseconds)", ("stage", "p50", "p99"), summary)
    decide_p50 = pct(every["decide"], 50)
    res.figures = {k: {"p50_us": pct(v, 50), "p99_us": pct(v, 99)} for k, v in every.items()}
    res.target(
        "decide p50 (typical commands)", "< 1,000 us", f"{decide_p50:,.0f} us", decide_p50 < 1000
    )
    run_long(opts, res)
    res.print_targets()
    return res
