"""Job specs: what a submitter sees for a good spec, for each kind of mistake,
and which workspaces the targets become. No mocks: real YAML, real folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.errors import SpecError, ToolInputError
from orchestrator.run.jobspec import (
    JobSpec,
    ResolvedTarget,
    load_spec,
    parse_spec,
    resolve,
    resolve_targets,
)
from orchestrator.run.steps import CountRange, ReplaceStep, SearchStep, ShellStep

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "orchestrator" / "examples").glob("*.yaml"))
KINDS = "search, replace, write, patch, read, list, delete, shell, fetch, web_search, browser"


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, "job.yaml")
    return info.value.problems


# --- the shipped examples ------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_shipped_example_validates(example: Path):
    spec = load_spec(example)
    assert spec.targets == ("sample-repos/*",)
    if spec.agent is None:
        assert spec.steps[-1].kind == "shell"
    else:  # the agent's script was read into the spec, and it runs the tests
        assert spec.agent.turns and spec.agent.script is None
        assert any(
            c["name"] == "shell" for t in spec.agent.turns for c in t.get("tool_calls") or ()
        )


def test_there_are_examples_and_the_examples_readme_lists_each_one():
    readme = (ROOT / "examples" / "README.md").read_text()
    assert len(EXAMPLES) >= 3
    for example in EXAMPLES:
        assert f"(../orchestrator/examples/{example.name})" in readme


# --- a good spec ---------------------------------------------------------------------


def test_a_valid_spec_becomes_a_frozen_job_with_typed_steps():
    spec = parse_spec("""\
name: rename fetch_user
targets: repos/*          # a single target may be written without a list
concurrency: 4
steps:
  - kind: replace
    name: rename
    pattern: fetch_user
    replacement: load_user
    expect: {min: 1, max: 40}
  - kind: search
    pattern: fetch_user
    expect: 0
  - kind: shell
    command: python3 -m unittest discover -q
""")
    assert spec == JobSpec(
        name="rename fetch_user",
        targets=("repos/*",),
        concurrency=4,
        steps=(
            ReplaceStep(
                name="rename",
                pattern="fetch_user",
                replacement="load_user",
                expect=CountRange(min=1, max=40),
            ),
            SearchStep(pattern="fetch_user", expect=CountRange(min=0, max=0)),
            ShellStep(command=("python3", "-m", "unittest", "discover", "-q")),
        ),
    )
    with pytest.raises(Exception):
        spec.name = "other"  # type: ignore[misc]


def test_a_spec_survives_the_json_round_trip_the_job_event_makes():
    spec = load_spec(ROOT / "orchestrator" / "examples" / "add-license.yaml")
    assert JobSpec.model_validate(spec.model_dump(mode="json")) == spec


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ("kind: search\n    pattern: '(('", "pattern '((' is not a valid regular expression"),
        ('kind: search\n    pattern: "a\\nb"', "contains a newline, but search matches"),
        ("kind: replace\n    pattern: (a)\n    replacement: '\\2'", "invalid group reference 2"),
    ],
)
def test_a_pattern_that_cannot_run_is_refused_at_submission_not_in_the_worker(step, expected):
    [found] = problems(f"name: n\ntargets: [a]\nsteps:\n  - {step}\n")
    assert found.startswith("steps[0] (line 4, column 5): ") and expected in found, found


def test_a_literal_pattern_is_never_a_regular_expression_problem():
    spec = parse_spec(
        "name: n\ntargets: [a]\nsteps:\n  - kind: search\n    pattern: '(('\n    literal: true\n"
    )
    assert spec.steps[0].pattern == "(("  # type: ignore[union-attr]


# --- mistakes, each with its position ------------------------------------------------


def test_a_missing_field_points_at_the_step_that_lacks_it():
    assert problems("name: bad\ntargets: [x]\nsteps:\n  - kind: replace\n    pattern: a\n") == [
        "steps[0].replacement (line 4, column 5): Field required"
    ]


def test_an_unknown_field_is_named_at_its_key_with_the_closest_allowed_one():
    assert problems("name: n\ntargets: [a]\nsteps:\n  - kind: search\n    patern: x\n") == [
        "steps[0].pattern (line 4, column 5): Field required",
        "steps[0].patern (line 5, column 5): unknown field 'patern'; did you mean 'pattern'? "
        "allowed here: name, continue_on_error, timeout_s, idempotent, hidden, no_ignore, pattern, literal, "
        "ignore_case, glob, expect, max_output_bytes",
    ]


def test_a_value_of_the_wrong_type_points_at_the_value_and_shows_it():
    assert problems(
        "name: n\ntargets: [a]\nsteps:\n  - kind: shell\n    command: [ls]\n    timeout_s: soon\n"
    ) == [
        # strict: a string is never parsed as a number, whatever it says
        "steps[0].timeout_s (line 6, column 16): Input should be a valid number, got 'soon'"
    ]


def test_an_unknown_step_kind_points_at_it_and_lists_the_kinds():
    assert problems("name: n\ntargets: [a]\nsteps:\n  - kind: grep\n    pattern: x\n") == [
        f"steps[0].kind (line 4, column 11): unknown step kind 'grep'; use one of: {KINDS}"
    ]


def test_a_step_without_a_kind_lists_the_kinds():
    assert problems("name: n\ntargets: [a]\nsteps:\n  - pattern: x\n") == [
        f"steps[0] (line 4, column 5): the step has no `kind`; add `kind:` with one of: {KINDS}"
    ]


def test_a_step_that_is_not_a_mapping_says_what_a_step_is():
    assert problems("name: n\ntargets: [a]\nsteps:\n  - search\n") == [
        f"steps[0] (line 4, column 5): a step is a mapping with a `kind` ({KINDS}) and that "
        "kind's fields, not 'search'"
    ]


def test_expect_with_min_above_max_is_refused_at_the_range():
    assert problems(
        "name: n\ntargets: [a]\nsteps:\n  - kind: search\n    pattern: x\n"
        "    expect: {min: 5, max: 1}\n"
    ) == ["steps[0].expect (line 6, column 13): min (5) is greater than max (1)"]


def test_a_name_with_other_characters_is_refused():
    assert problems("name: 'rename/all!'\ntargets: [a]\nsteps: [{kind: search, pattern: x}]\n") == [
        "name (line 1, column 7): use only letters, digits, '.', '_', '-' "
        "and single spaces between words"
    ]


def test_a_job_needs_a_target_and_a_step():
    assert problems("name: n\ntargets: []\nsteps: []\n") == [
        "targets (line 2, column 10): a job needs at least one target",
        "steps (line 3, column 8): a job needs at least one step, or an `agent` block",
    ]


def test_every_problem_is_listed_at_once_in_file_order():
    found = problems("""\
name: n
targets: [a, '']
concurrency: 0
steps:
  - kind: replace
    pattern: a
  - kind: shell
    command: ""
    env: {HOME: 1}
unknown: 1
""")
    assert found == [
        "targets[1] (line 2, column 14): target is empty; give a directory or a glob of "
        "directories",
        "concurrency (line 3, column 14): Input should be greater than or equal to 1",
        "steps[0].replacement (line 5, column 5): Field required",
        "steps[1].command (line 8, column 14): command is empty",
        "steps[1].env.HOME (line 9, column 17): Input should be a valid string, got 1",
        "unknown (line 10, column 1): unknown field 'unknown'; allowed here: name, "
        "description, targets, toolchains, agent, steps, concurrency, policy, tier",
    ]


def test_duplicate_step_names_are_refused_even_beside_other_mistakes():
    found = problems("""\
name: n
targets: [a]
steps:
  - {kind: search, name: check, pattern: x}
  - {kind: search, name: check}
""")
    assert found == [
        "steps[1].pattern (line 5, column 5): Field required",
        "steps[1].name (line 5, column 26): step name 'check' is already used by steps[0]; "
        "step names must be unique within a job",
    ]


def test_duplicate_step_names_are_refused_when_built_in_python_too():
    with pytest.raises(Exception, match="steps\\[1\\] repeats 'a' of steps\\[0\\]"):
        JobSpec(
            name="n",
            targets=("a",),
            steps=(SearchStep(name="a", pattern="x"), SearchStep(name="a", pattern="y")),
        )


def test_a_duplicate_key_is_refused_although_yaml_would_keep_the_last():
    assert problems(
        "name: n\ntargets: [a]\nsteps:\n  - kind: search\n    pattern: x\n    pattern: y\n"
    ) == [
        "steps[0].pattern (line 6, column 5): duplicate key 'pattern', first at line 5; "
        "YAML keeps only the last value, so remove or rename one"
    ]


def test_a_yaml_syntax_error_gives_its_line_and_column():
    assert problems("name: n\n  targets: [a]\n") == [
        "YAML syntax error (line 2, column 10): mapping values are not allowed here"
    ]
    assert problems("name: n\ntargets: [a\nsteps: []\n") == [
        "YAML syntax error (line 3, column 6): expected ',' or ']', but got ':' (while "
        "parsing a flow sequence (line 2, column 10))"
    ]


def test_a_tab_in_the_indentation_says_to_use_spaces():
    [found] = problems("name: n\n\ttargets: [a]\n")
    assert found.startswith("YAML syntax error (line 2, column 1):")
    assert found.endswith("indent with spaces, YAML does not allow tabs there")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "~\n"])
def test_an_empty_spec_is_refused_with_what_a_spec_needs(text: str):
    assert problems(text) == [
        "the spec is empty; a job spec is a mapping with `name`, `targets` and `steps`"
    ]


def test_a_top_level_list_is_refused():
    assert problems("- name: n\n") == [
        "(top level) (line 1, column 1): a job spec is a mapping with `name`, `targets` and "
        "`steps`, not a list"
    ]


def test_python_tags_are_not_executed_but_refused():
    [found] = problems("name: !!python/object/apply:os.system ['true']\n")
    assert found.startswith(
        "YAML syntax error (line 1, column 7): could not determine a constructor for the tag"
    )


def test_the_error_names_the_file_counts_the_problems_and_exits_2(tmp_path: Path):
    path = tmp_path / "job.yaml"
    path.write_text("name: n\ntargets: [a]\nsteps:\n  - kind: replace\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.exit_code == 2
    assert info.value.source == str(path)
    assert str(info.value).startswith(
        f"job spec {path} is invalid (2 problems); nothing was "
        "enqueued:\n  - steps[0].pattern (line 4, column 5)"
    )


def test_an_unreadable_file_is_a_spec_error(tmp_path: Path):
    with pytest.raises(SpecError, match="cannot read the file: No such file or directory"):
        load_spec(tmp_path / "missing.yaml")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecError, match="not UTF-8 text"):
        load_spec(latin1)


# --- targets -------------------------------------------------------------------------


def spec_for(*targets: str) -> JobSpec:
    return JobSpec(name="n", targets=targets, steps=(SearchStep(pattern="x"),))


def make_dirs(base: Path, *names: str) -> None:
    for name in names:
        (base / name).mkdir(parents=True)


def test_a_glob_expands_to_its_directories_sorted_and_skips_files(tmp_path: Path):
    make_dirs(tmp_path, "repos/b", "repos/a", "repos/.hidden")
    (tmp_path / "repos" / "notes.txt").write_text("x")
    assert resolve_targets(spec_for("repos/*"), tmp_path) == [
        ResolvedTarget("repos/a", tmp_path / "repos" / "a", None),
        ResolvedTarget("repos/b", tmp_path / "repos" / "b", None),
    ]


def test_a_glob_matching_no_directory_is_one_failed_target(tmp_path: Path):
    make_dirs(tmp_path, "repos")
    (tmp_path / "repos" / "file.py").write_text("x")
    assert resolve_targets(spec_for("repos/*", "nothing-*"), tmp_path) == [
        ResolvedTarget(
            "repos/*",
            None,
            f"glob 'repos/*' matched no directory (relative to "
            f"{tmp_path}); check the pattern and the base directory",
        ),
        ResolvedTarget(
            "nothing-*",
            None,
            f"glob 'nothing-*' matched no directory (relative "
            f"to {tmp_path}); check the pattern and the base "
            "directory",
        ),
    ]


def test_a_missing_directory_or_a_file_fails_alone_and_the_others_resolve(tmp_path: Path):
    make_dirs(tmp_path, "ok")
    (tmp_path / "file").write_text("x")
    assert resolve_targets(spec_for("gone", "file", "ok"), tmp_path) == [
        ResolvedTarget(
            "gone",
            tmp_path / "gone",
            f"target 'gone' does not exist: {tmp_path / 'gone'} (relative to {tmp_path})",
        ),
        ResolvedTarget(
            "file", tmp_path / "file", f"target 'file' is not a directory: {tmp_path / 'file'}"
        ),
        ResolvedTarget("ok", tmp_path / "ok", None),
    ]


def test_relative_targets_resolve_against_the_base_dir_not_the_spec_file(tmp_path: Path):
    make_dirs(tmp_path, "work/repos/one", "specs/repos/two")
    spec_file = tmp_path / "specs" / "job.yaml"
    spec_file.write_text("name: n\ntargets: [repos/*]\nsteps: [{kind: search, pattern: x}]\n")
    assert resolve_targets(load_spec(spec_file), tmp_path / "work") == [
        ResolvedTarget("repos/one", tmp_path / "work" / "repos" / "one", None)
    ]


def test_a_directory_named_twice_is_kept_once_at_its_first_place(tmp_path: Path):
    make_dirs(tmp_path, "repos/a", "repos/b")
    os.symlink(tmp_path / "repos" / "a", tmp_path / "link-to-a")
    targets = resolve_targets(spec_for("repos/b", "repos/*", "link-to-a", "./repos/b/"), tmp_path)
    assert targets == [
        ResolvedTarget("repos/b", tmp_path / "repos" / "b", None),
        ResolvedTarget("repos/a", tmp_path / "repos" / "a", None),
    ]


def test_a_symlinked_target_runs_in_the_real_directory_under_its_own_name(tmp_path: Path):
    make_dirs(tmp_path, "elsewhere/real", "base")
    os.symlink(tmp_path / "elsewhere" / "real", tmp_path / "base" / "linked")
    assert resolve_targets(spec_for("linked"), tmp_path / "base") == [
        ResolvedTarget("linked", tmp_path / "elsewhere" / "real", None)
    ]


def test_targets_outside_the_base_dir_keep_their_absolute_path_as_name(tmp_path: Path):
    make_dirs(tmp_path, "outside/x", "outside/y", "base")
    targets = resolve_targets(
        spec_for(str(tmp_path / "outside" / "*"), "../outside/x"), tmp_path / "base"
    )
    assert targets == [
        ResolvedTarget(str(tmp_path / "outside" / "x"), tmp_path / "outside" / "x", None),
        ResolvedTarget(str(tmp_path / "outside" / "y"), tmp_path / "outside" / "y", None),
    ]


def test_display_names_stay_unique_when_two_targets_would_share_one(tmp_path: Path):
    base = tmp_path / "work"
    make_dirs(base, "work")
    assert resolve_targets(spec_for(".", "work"), base) == [
        ResolvedTarget("work", base, None),
        ResolvedTarget("work (2)", base / "work", None),
    ]


def test_a_base_dir_with_glob_characters_is_taken_literally(tmp_path: Path):
    base = tmp_path / "odd[1]"
    make_dirs(base, "repos/a")
    assert resolve_targets(spec_for("repos/*"), base) == [
        ResolvedTarget("repos/a", base / "repos" / "a", None)
    ]


def test_a_relative_base_dir_is_taken_from_the_current_directory(tmp_path: Path):
    make_dirs(tmp_path, "repos/a")
    relative = Path(os.path.relpath(tmp_path))
    [target] = resolve_targets(spec_for("repos/*"), relative)
    assert target == ResolvedTarget("repos/a", tmp_path / "repos" / "a", None)


# --- per-target variables ------------------------------------------------------------

THREE_RENAMES = """\
name: three renames
targets:
  - path: repos/a
    vars: {old: fetch_user, new: load_user}
  - path: repos/b
    vars: {old: get_account, new: load_account}
  - path: repos/c
    vars: {old: "user.name", new: display_name}
steps:
  - kind: replace
    name: rename
    pattern: '\\b{{ vars.old | regex_escape }}\\b'
    replacement: '{{ vars.new }}'
  - kind: shell
    name: check
    command: grep -rn "{{ vars.old }} is gone" . --format '{{.State}}'
  - kind: write
    name: chart
    path: values.yaml
    content: "name: {{ .Values.name }}\\n"
"""


def repos(tmp_path: Path, *names: str) -> Path:
    for name in names:
        (tmp_path / "repos" / name).mkdir(parents=True)
    return tmp_path


def test_each_target_runs_the_steps_with_its_own_variables(tmp_path: Path):
    spec = parse_spec(THREE_RENAMES, "job.yaml")
    targets = resolve(spec, repos(tmp_path, "a", "b", "c"))
    assert [t.name for t in targets] == ["repos/a", "repos/b", "repos/c"]
    assert [(t.steps[0].pattern, t.steps[0].replacement) for t in targets] == [  # type: ignore[union-attr]
        (r"\bfetch_user\b", "load_user"),
        (r"\bget_account\b", "load_account"),
        (r"\buser\.name\b", "display_name"),
    ]
    # A template span is one word however it is spaced, and its value one argument;
    # braces of other languages (Go, Helm) are left as written.
    assert targets[0].steps[1].command == (  # type: ignore[union-attr]
        "grep",
        "-rn",
        "fetch_user is gone",
        ".",
        "--format",
        "{{.State}}",
    )
    assert targets[2].steps[2].content == "name: {{ .Values.name }}\n"  # type: ignore[union-attr]
    assert spec.steps[0].pattern == r"\b{{ vars.old | regex_escape }}\b"  # type: ignore[union-attr]
    assert JobSpec.model_validate(spec.model_dump(mode="json")) == spec
    assert resolve_targets(spec, tmp_path)[1] == ResolvedTarget(
        "repos/b", tmp_path / "repos" / "b", None
    )


def test_a_glob_target_shares_its_variables(tmp_path: Path):
    spec = parse_spec(
        "name: n\ntargets:\n  - path: 'repos/*'\n    vars: {old: x}\n"
        "steps:\n  - kind: search\n    pattern: '{{ vars.old }}'\n",
        "job.yaml",
    )
    targets = resolve(spec, repos(tmp_path, "a", "b"))
    assert [t.steps[0].pattern for t in targets] == ["x", "x"]  # type: ignore[union-attr]
    assert [t.vars for t in targets] == [{"old": "x"}, {"old": "x"}]


def test_a_variable_a_target_lacks_is_named_with_the_target_and_the_step():
    found = problems("""\
name: n
targets:
  - path: repos/a
    vars: {old: fetch_user, new: load_user}
  - path: repos/b
    vars: {old: get_account}
  - repos/c
steps:
  - kind: replace
    name: rename
    pattern: '{{ vars.old }}'
    replacement: '{{ vars.new }}'
""")
    hint = "add it under that target's `vars`"
    assert found == [
        f"steps[0] (line 9, column 5): targets[1] (repos/b) has no variable 'new', "
        f"which steps[0] (rename) uses in `replacement`; {hint}",
        f"steps[0] (line 9, column 5): targets[2] (repos/c) has no variable 'old', "
        f"which steps[0] (rename) uses in `pattern`; {hint}",
        f"steps[0] (line 9, column 5): targets[2] (repos/c) has no variable 'new', "
        f"which steps[0] (rename) uses in `replacement`; {hint}",
    ]


def test_a_value_that_breaks_its_step_is_reported_at_submission():
    found = problems(
        THREE_RENAMES.replace("old: fetch_user", "old: 'fetch_('").replace(" | regex_escape", "")
    )
    assert found == [
        "steps[0] (line 10, column 5): targets[0] (repos/a): steps[0] (rename) with this "
        "target's vars: pattern '\\\\bfetch_(\\\\b' is not a valid regular expression: "
        "missing ), unterminated subpattern at position 8. Fix it (Python `re` syntax), "
        "or set `literal: true` to match the text as is."
    ]


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("pattern: '{{ vars.old '", "is not a valid template"),
        ("pattern: '{{ target }}{{ vars.old }}'", "a step template knows only `vars`"),
        ("pattern: '{{ vars.old * 99999999 }}'", "uses a mul; a step template may only"),
        ("pattern: '{{ vars.old | center(99999999) }}'", "uses the filter 'center'"),
        ("pattern: '{% for i in range(9) %}{{ vars.old }}{% endfor %}'", "uses a for"),
    ],
)
def test_a_broken_template_is_refused_at_its_step(field: str, expected: str):
    [found] = problems(
        f"name: n\ntargets:\n  - path: a\n    vars: {{old: x}}\nsteps:\n  - kind: search\n    {field}\n"
    )
    assert found.startswith("steps[0] (line 6, column 5): ") and expected in found


def test_variable_names_are_identifiers_and_values_strings():
    found = problems(
        "name: n\ntargets:\n  - path: a\n    vars: {'bad-name': x, n: 3}\nsteps:\n  - kind: search\n    pattern: p\n"
    )
    assert any("variable name 'bad-name' is not an identifier" in p for p in found)
    assert any("targets[0].vars.n" in p and "valid string" in p for p in found)


# --- toolchains ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("../shared/venv", "contains `..`"),
        ("/opt/py/../../etc", "contains `..`"),
        ('"bin\\tdir"', "control character"),
        ("'~/.pyenv'", "starts with ~"),
        ("''", "toolchain is empty"),
    ],
)
def test_a_toolchain_must_be_absolute_or_inside_the_target(entry: str, expected: str):
    [found] = problems(
        f"name: n\ntargets: [a]\ntoolchains: [{entry}]\nsteps:\n  - kind: search\n    pattern: p\n"
    )
    assert found.startswith("toolchains[0] (line 3, column 14): ") and expected in found


def test_toolchains_resolve_per_target_and_a_target_may_name_its_own(tmp_path: Path):
    base = repos(tmp_path, "a", "b", "c")
    (base / "repos" / "a" / ".venv" / "bin").mkdir(parents=True)
    (base / "node").mkdir()
    (base / "repos" / "c" / ".venv").symlink_to(base / "node")  # a symlink out
    spec = parse_spec(
        f"name: n\ntoolchains: [.venv, {base / 'node'}]\ntargets:\n  - repos/a\n"
        "  - path: repos/b\n    toolchains: []\n  - repos/c\nsteps:\n  - kind: search\n"
        "    pattern: p\n",
        "job.yaml",
    )
    a, b, c = resolve(spec, base)
    assert a.toolchains == (str(base / "repos" / "a" / ".venv"), str(base / "node"))
    assert a.error is None and b.toolchains == () and b.error is None
    assert c.toolchains == () and "toolchain '.venv' leads out of the target" in (c.error or "")
    assert spec.toolchains_for(base / "repos" / "a") == a.toolchains
    (base / "repos" / "a" / ".venv" / "bin").rmdir()
    (base / "repos" / "a" / ".venv").rmdir()
    [missing, *_] = resolve(spec, base)
    assert missing.error is not None and "toolchain '.venv' is not a directory" in missing.error
    with pytest.raises(ToolInputError, match="is not a directory"):
        spec.toolchains_for(base / "repos" / "a")
