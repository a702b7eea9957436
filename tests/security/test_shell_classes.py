"""The bypass classes of issue 16, generated as classes (every split point,
every hiding form, every context), against the default policy. Pure: no
process runs. `REGRESSIONS` holds every escape the differential tester
(tests/security/differential) found; it is also part of that tester's corpus.

Each line must be denied before anything runs, by a named rule.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from orchestrator.guard.commands import MAX_BYTES, MAX_NESTING, analyze, analyze_argv
from orchestrator.guard.decision import decide_request
from orchestrator.guard.policy import DEFAULT_POLICY
from tests.security.differential import grammar

# Lines on which the differential tester saw bash start a program the analysis
# had not reported (with the rule that now decides them). Seed 1 of the
# grammar before the fixes in this change, then `make fuzz-shell` runs.
REGRESSIONS: dict[str, str] = {
    'echo "$\\\n(id)" | pwd': "allow-id",  # now seen: `id` is reported
    "i\\\nd || git status": "allow-id",
    "! sud\\\no id": "deny-sudo",
    "/bin/\\\nrm -rf build": "destructive-rm",
    's\\\nh -c "$PAYLOAD"': "shell:dynamic-shell-code",
    '((\x27a["$(id)"]\x27))': "shell:arith-code",
    "let x='a[`id`]'": "shell:arith-code",
    "( a['b[${x:-$(id)}]']=1 )": "shell:arith-code",
    "cat <<EOF\nreturn 'a[`id`]'\nEOF": "shell:heredoc-code",
    "true && pwd\ncat <<EOF\necho '$\\\n(id)'\nEOF": "shell:heredoc-code",
    "[[ 'a[$((1+$(id)))]' -eq 1 ]]": "shell:arith-code",
    "echo $['a[$(id)]']": "shell:arith-code",
    "[[ 1 -lt 'x[$(id)]+1' ]]": "shell:arith-code",
    "cat README.md; [[ -v a\\[\\$\\(id\\)\\] ]]": "shell:arith-code",
    "[ -v 'a[$((1+$(id)))]' ]": "shell:arith-code",
    "true && typeset 'a[`id`]'=1": "shell:arith-code",
    "let a\\[\\$\\(id\\)\\]": "shell:arith-code",
    "x=(1 2); echo ${x['x[$(id)]+1']}": "shell:arith-code",
    "a[$(id)]=1": "allow-id",  # the subscript's substitution was not reported
    "ls; declare -x HOME=/opt/work; bash -il -c true": "shell:startup-env",
    "export HOME=/opt/work; sh -l -c true | pwd": "shell:startup-env",
    "HOME=. exec -a -bash bash -c true": "shell:startup-env",
    "cd; HOME=/opt/work bash -c 'exec -l bash -c true'": "shell:startup-env",
    "( f() { HOME=$PWD bash -i -c true; }; f )": "shell:startup-env",
    "env HOME=/opt/work bash -lc true": "shell:startup-env",
    'bash -c "declare -x HOME=/opt/work; bash -lc true"': "shell:startup-env",
    "x='$(id)'; echo ${x@P}": "shell:prompt-expansion",
    "ls | xargs": "allow-echo",  # xargs alone runs echo
    # `make fuzz-shell`, seed 1616, 6,113 lines run: 19 escapes, of which these
    # three kinds were real (the rest: `bash id ...`, bash reading the shim
    # `id` from PATH as a script, which the tester now tells apart)
    "export H'OM'E=/opt/work; sh -l -c true | pwd": "shell:startup-env",
    "bash -c \"declare -x HO'ME=/o'pt/work; bash -lc true\"": "shell:startup-env",
    "wc -l x | cat <<EOF\necho $(('x[$(id)]+1'))\nEOF": "shell:arith-code",
    "cat <<EOF\necho $(('b[${x:-$(id)}]'))\nEOF": "shell:arith-code",
    "cat <<EOF\nbash -c \"echo $(('a[$(id)]'))\"\nEOF": "shell:arith-code",
}


@pytest.mark.parametrize(("line", "rule"), REGRESSIONS.items(), ids=list(REGRESSIONS))
def test_escapes_the_differential_tester_found_are_decided(line: str, rule: str):
    v = decide_request("shell", DEFAULT_POLICY, command=line)
    assert rule in [m.rule_id for m in v.matches], (line, v.matches)
    if rule.startswith("shell:") or rule.startswith("deny-"):
        assert v.decision == "deny"
    if "id" in line.replace("pid", ""):
        names = {i.name for i in analyze(line).invocations}
        assert "id" in names or v.decision == "deny", (line, names)


# -- quoting: backslash-newline anywhere -------------------------------------------------

SMUGGLED = (
    'echo "$(sudo id)"',
    "echo $(sudo id)",
    "echo `sudo id`",
    'echo "${x:-$(sudo id)}"',
    "sudo id",
    "cat <<EOF\n$(sudo id)\nEOF",
    "sh -c 'sudo id'",
    'bash -c "echo \\"$(sudo id)\\""',
)


def _splits(line: str) -> list[str]:
    """`line` with a backslash-newline put at each point (not right after a
    backslash, which would escape it instead)."""
    return [line[:i] + "\\\n" + line[i:] for i in range(1, len(line)) if line[i - 1] != "\\"]


@pytest.mark.parametrize("base", SMUGGLED)
def test_a_backslash_newline_at_any_point_hides_nothing(base: str):
    for line in [*_splits(base), *(a for s in _splits(base)[::3] for a in _splits(s)[::5])]:
        v = decide_request("shell", DEFAULT_POLICY, command=line)
        assert v.decision == "deny", (line, v.matches)
        assert v.rule_id.startswith(("deny-sudo", "shell:")), (line, v.rule_id)


def test_a_continuation_inside_single_quotes_and_comments_stays_literal():
    assert decide_request("shell", DEFAULT_POLICY, command="echo '$\\\n(id)'").decision == "allow"
    a = analyze("# note \\\nls")
    assert [i.name for i in a.invocations] == ["ls"]


# -- arithmetic and subscripts -------------------------------------------------------------

# `printf %d` converts without arithmetic in bash 5 (the differential tester
# runs it): it may stay allowed.
ARITH_LINES = [
    t.replace("W", h)
    for t, h in itertools.product(grammar.ARITH, grammar.HIDDEN)
    if not t.startswith("printf %d")
]


def test_every_word_reaching_arithmetic_with_hidden_code_is_denied():
    bad = []
    for line in ARITH_LINES:
        v = decide_request("shell", DEFAULT_POLICY, command=line)
        if v.decision != "deny" or not v.rule_id.startswith("shell:"):
            bad.append((line, v.decision, v.rule_id))
    assert not bad, bad
    assert len(ARITH_LINES) > 300


@pytest.mark.parametrize(
    "line",
    [
        "echo $((1 + 2))",
        "i=0; i=$((i + 1)); echo $i",
        "for ((i=0; i<3; i++)); do echo $i; done",
        "[[ $# -eq 0 ]] && echo none",
        'x=(a b); echo "${x[1]}" ${#x[@]} ${x[@]:1:1}',
        "read -r line < README.md",
        "printf -v out '%s-%s' a b",
        "let n=n+1",
        "declare -a arr=(1 2 3)",
        "unset arr",
        "test -v HOME && echo set",
        "[[ -v x ]] || echo unset",
        "export FOO=bar",
        "printf '%s\\n' \"FOO=$(pwd)\"",
    ],
)
def test_ordinary_arithmetic_and_builtins_stay_allowed(line: str):
    v = decide_request("shell", DEFAULT_POLICY, command=line)
    assert v.decision == "allow", (line, v.matches)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(grammar.ARITH),
    st.sampled_from(("$(sudo id)", "`sudo id`", "$( sudo id )")),
    st.sampled_from(("'a[{}]'", '"a[\\{}]"', "'b[${{x:-{}}}]'", "'x[{}]+1'")),
    st.sampled_from(("{}", "builtin {}", "command {}", 'sh -c "{}"', "f() {{ {}; }}; f")),
)
def test_hidden_arithmetic_code_through_wrappers_is_denied(tmpl, sub, form, wrap):
    if wrap.startswith(("builtin", "command")):  # those run one simple command
        assume(tmpl.split()[0].isalpha() and ";" not in tmpl and tmpl.split()[0] != "for")
    assume(not tmpl.startswith("printf %d"))
    inner = tmpl.replace("W", form.format(sub))
    line = wrap.format(inner.replace('"', '\\"')) if "sh -c" in wrap else wrap.format(inner)
    v = decide_request("shell", DEFAULT_POLICY, command=line)
    assert v.decision == "deny", (line, v.matches)


# -- prompt expansion ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "echo ${x@P}",
        'echo "${x@P}"',
        "echo ${x[@]@P}",
        "echo ${!y@P}",
        "PS4='$(id)'; set -x; true",
        "PS1='$(id)' bash -i -c true",
        "PS0=x bash",
    ],
)
def test_expansions_that_evaluate_a_prompt_are_denied(line: str):
    v = decide_request("shell", DEFAULT_POLICY, command=line)
    assert v.decision == "deny" and v.rule_id in ("shell:prompt-expansion", "shell:env-override")


# -- startup files ----------------------------------------------------------------------------

LOGIN = [s for s in grammar.STARTS if s not in ("sh -c true", "bash -c true")]
POINTERS = [p for p in grammar.POINT if p]


def test_a_login_or_interactive_shell_may_not_be_pointed_at_other_startup_files():
    bad = []
    for point, start in itertools.product(POINTERS, LOGIN):
        line = point + start
        v = decide_request("shell", DEFAULT_POLICY, command=line)
        if v.decision != "deny" or v.rule_id not in (
            "shell:startup-env",
            "shell:env-override",
            "shell:code-from-stdin",
        ):
            bad.append((line, v.rule_id))
    assert not bad, bad


@pytest.mark.parametrize(
    "line",
    [
        "read HOME < x; bash -l -c true",
        "printf -v HOME %s .; bash -i -c true",
        "unset HOME; bash -l -c true",
        "HOME=. zsh -c true",
        "ZDOTDIR=. zsh -c true",
        "XDG_CONFIG_HOME=. fish -c true",
        "builtin export HOME=.; exec -l bash",
    ],
)
def test_other_ways_to_set_the_startup_variables_are_denied(line: str):
    v = decide_request("shell", DEFAULT_POLICY, command=line)
    assert (v.decision, v.rule_id) == ("deny", "shell:startup-env"), v.matches


def test_setting_home_without_a_startup_shell_and_a_plain_login_shell_are_allowed():
    assert decide_request("shell", DEFAULT_POLICY, command="HOME=. ls").decision == "allow"
    assert decide_request("shell", DEFAULT_POLICY, command="bash -l -c ls").decision == "allow"
    assert decide_request("shell", DEFAULT_POLICY, command="HOME=. bash -c ls").decision == "allow"


# -- size and depth ----------------------------------------------------------------------------


def _rule(line: str) -> tuple[str, str]:
    v = decide_request("shell", DEFAULT_POLICY, command=line)
    return v.decision, v.rule_id


def test_a_line_past_the_size_cap_is_denied_with_its_own_rule():
    assert _rule("echo " + "x" * (100 * 1024)) == ("deny", "shell:too-long")
    assert _rule("echo " + "x" * (MAX_BYTES - 10))[0] == "allow"
    big = "true && " * 9000 + "sudo id"
    assert [r.rule for r in analyze_argv(["bash", "-c", big]).refusals] == ["too-long"]
    assert [r.rule for r in analyze_argv(["python3", "-c", big]).refusals] == ["too-long"]


@pytest.mark.parametrize("n", [1000, 5000])
def test_long_chains_are_walked_without_recursion(n: int):
    for joiner in (" && ", " || ", "; ", " | ", "\n"):
        line = joiner.join(["true"] * n) + joiner + "sudo id"
        assert _rule(line) == ("deny", "deny-sudo")
        assert _rule(joiner.join(["true"] * n))[0] == "allow"


@pytest.mark.parametrize(
    "line",
    [
        "echo " + "$(" * 1000 + "true" + ")" * 1000,
        "echo " + '"$(echo ' * 300 + "x" + ')"' * 300,
        "env " * 1000 + "true",
        "( " * 2000 + "true" + " )" * 2000,
        "{ " * 1000 + "true; " + "}; " * 1000,
        "sh -c " * 50 + "true",
        "echo $((" + "(" * 2000 + "1" + ")" * 2000 + "))",
        "x=" + "$(" * 500 + ")" * 500,
        "a[" * 500 + "1" + "]" * 500 + "=1",
    ],
    ids=["subst", "strings", "wrappers", "subshells", "braces", "sh-c", "arith", "assign", "subs"],
)
def test_deep_nesting_is_a_decision_never_a_crash(line: str):
    decision, rule = _rule(line)
    assert decision in ("allow", "deny")
    if decision == "deny":
        assert rule in ("shell:too-deep", "shell:unparseable", "shell:too-long"), rule


def test_nesting_past_the_cap_is_denied_as_too_deep():
    line = "echo " + "$(echo " * (MAX_NESTING + 5) + "x" + ")" * (MAX_NESTING + 5)
    assert _rule(line) == ("deny", "shell:too-deep")
    line = "echo " + "$(echo " * 10 + "x" + ")" * 10
    assert _rule(line)[0] == "allow"
    assert analyze_argv(["env"] * 50 + ["true"]).refusals[0].rule == "too-deep"
