"""Per-target variables in step fields: `pattern: '\\b{{ vars.old }}\\b'`.

A string field of a step is a template when it refers to `vars` inside
`{{ }}` or `{% %}`; only such strings are rendered, so a Go template in a
shell command (`-f '{{.State}}'`) or a Helm chart a `write` step writes stays
exactly as written. Rendering is Jinja2's sandbox with `StrictUndefined`:
no attribute or file access, and a missing variable is an error, never an
empty string. A template may only look variables up, join text and apply a
few string filters: no loops, calls or arithmetic, so a submitted spec cannot
make the service spin or fill its memory while its templates are checked.
Every target's rendering is checked when the job is submitted
(orchestrator.run.jobspec), so a run never meets a bad one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import TypeAdapter, ValidationError

from orchestrator.errors import ToolInputError
from orchestrator.run.steps import ReplaceStep, SearchStep, Step
from orchestrator.run.targets import TargetSpec
from orchestrator.tools.replace import compile_replace
from orchestrator.tools.search import search_pattern

__all__ = ["Reference", "references", "render_step", "template_problems", "TemplateProblem"]

_STEP: TypeAdapter[Any] = TypeAdapter(Step)
_UNTEMPLATED = ("kind", "name")  # a step's identity is the same on every target
_MENTIONS_VARS = re.compile(r"\{[{%]-?\s*[^}%]*\bvars\b")

_ENV = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
)
_ENV.filters["regex_escape"] = re.escape  # `{{ vars.old | regex_escape }}` in a pattern
# What a template may contain: lookups, text, `~` and these filters (each one's
# output bounded by its input).
_NODES = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Name,
    nodes.Getattr,
    nodes.Getitem,
    nodes.Const,
    nodes.Concat,
    nodes.Filter,
)
FILTERS = frozenset({"regex_escape", "lower", "upper", "title", "capitalize", "trim", "replace"})


class TemplateProblem(ValueError):
    """A template a step cannot use, whatever the target's variables."""


class Reference(NamedTuple):
    """One templated string of a step: where it is, and the variables it uses."""

    field: str
    text: str
    names: frozenset[str]


@lru_cache(maxsize=1024)
def _variables(text: str) -> frozenset[str] | None:
    """The `vars.NAME` names `text` uses, or None when it is no template of
    ours. Raises TemplateProblem for a broken template that means to be one."""
    if "{{" not in text and "{%" not in text:
        return None
    try:
        tree = _ENV.parse(text)
    except jinja2.TemplateSyntaxError as err:
        if _MENTIONS_VARS.search(text):
            raise TemplateProblem(
                f"{text!r} is not a valid template ({err.message}, line {err.lineno}); "
                "write literal braces as {{ '{{' }} or inside {% raw %}...{% endraw %}"
            ) from None
        return None  # not ours: braces of another language, kept as written
    free = meta.find_undeclared_variables(tree)
    if "vars" not in free:
        return None
    if free - {"vars"}:
        raise TemplateProblem(
            f"{text!r} uses {', '.join(sorted(free - {'vars'}))}; a step template "
            "knows only `vars` (the target's variables, as vars.NAME)"
        )
    for node in tree.find_all(nodes.Node):
        if not isinstance(node, _NODES) or (
            isinstance(node, nodes.Filter) and node.name not in FILTERS
        ):
            what = (
                f"the filter {node.name!r}"
                if isinstance(node, nodes.Filter)
                else (f"a {type(node).__name__.lower()}")
            )
            raise TemplateProblem(
                f"{text!r} uses {what}; a step template may only say {{{{ vars.NAME }}}}, "
                f"join with ~ and apply the filters {', '.join(sorted(FILTERS))}"
            )
    names = {n.attr for n in tree.find_all(nodes.Getattr) if _is_vars(n.node)}
    names |= {
        n.arg.value
        for n in tree.find_all(nodes.Getitem)
        if _is_vars(n.node) and isinstance(n.arg, nodes.Const) and isinstance(n.arg.value, str)
    }
    return frozenset(names)


@lru_cache(maxsize=1024)
def _compiled(text: str) -> jinja2.Template:
    """A template compiled once, however many targets render it."""
    return _ENV.from_string(text)


def _is_vars(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "vars"


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}" if path else str(key))


def references(step: Step) -> list[Reference]:
    """Every templated string of `step`, with the variables it uses."""
    data = step.model_dump(mode="json", exclude=set(_UNTEMPLATED))
    out = []
    for field, text in _strings(data, ""):
        names = _variables(text)
        if names is not None:
            out.append(Reference(field, text, names))
    return out


def render_step(step: Step, variables: Mapping[str, str]) -> Step:
    """`step` with its templated strings rendered for one target's variables,
    validated again as a step (pydantic's ValidationError if a value breaks
    it; jinja2's UndefinedError for a variable the target lacks)."""
    if not references(step):
        return step
    context = {"vars": dict(variables)}

    def render(value: Any) -> Any:
        if isinstance(value, str):
            if _variables(value) is None:
                return value
            return _compiled(value).render(context)
        if isinstance(value, list):
            return [render(v) for v in value]
        if isinstance(value, dict):
            return {k: render(v) for k, v in value.items()}
        return value

    data = step.model_dump(mode="json")
    rendered = {k: v if k in _UNTEMPLATED else render(v) for k, v in data.items()}
    return _STEP.validate_python(rendered)  # type: ignore[no-any-return]


def template_problems(
    steps: Sequence[Step], targets: Sequence[TargetSpec]
) -> list[tuple[int, str]]:
    """(step index, problem) for each step that cannot run on a target once its
    variables are in: a broken template, a variable the target lacks, or a
    rendered value that breaks the step (pydantic, or the tool's own check
    of a pattern or replacement)."""
    found = []
    for j, step in enumerate(steps):
        label = f"steps[{j}] ({step.label})"
        try:
            refs = references(step)
        except TemplateProblem as exc:
            found.append((j, str(exc)))
            continue
        if not refs:  # no variables: its pattern is checked as it stands, once
            found += [(j, problem) for problem in _rendered_problems(step, {})]
            continue
        for i, target in enumerate(targets):
            where = f"targets[{i}] ({target.path})"
            missing = [
                f"{where} has no variable {name!r}, which {label} uses in `{ref.field}`; "
                "add it under that target's `vars`"
                for ref in refs
                for name in sorted(ref.names - target.vars.keys())
            ]
            broken = missing or [
                f"{where}: {label} with this target's vars: {problem}"
                for problem in _rendered_problems(step, target.vars)
            ]
            found += [(j, text) for text in broken]
    return found


def _rendered_problems(step: Step, variables: Mapping[str, str]) -> list[str]:
    try:
        rendered = render_step(step, variables) if variables else step
        if isinstance(rendered, SearchStep):
            search_pattern(rendered)
        elif isinstance(rendered, ReplaceStep):
            compile_replace(rendered)
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors()]
    except (jinja2.TemplateError, ToolInputError) as exc:
        return [str(exc)]
    return []
