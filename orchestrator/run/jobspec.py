"""Job specs: the YAML a submitter writes, validated into a frozen `JobSpec`.

`parse_spec` and `load_spec` report every problem of a spec at once, each with
its field path as written in the file and its YAML line and column:

    steps[2].pattern (line 14, column 7): Field required

The positions come from the composed node tree (`yaml.compose`): the text is
parsed once, each pydantic error location walked down the tree the values
came from, and duplicate keys found on it. Size: `spec_input.MAX_SPEC_BYTES`.

A target is a directory (or a glob of them), or a mapping `{path, vars,
toolchains}`: step strings saying `{{ vars.NAME }}` are rendered per target
(orchestrator.run.templates), every rendering checked at submission: a
variable a target lacks, or a value that breaks its step (a bad regex), is a
spec error naming the target, the step and the variable.

`resolve` turns the spec's targets into workspaces with steps and toolchains
(`resolve_targets`: (name, path, error)). Relative targets resolve against the
caller's base directory (the CLI: the cwd, or `--base-dir`). A target that does
not resolve keeps its error instead of raising, so it fails alone at run time.
"""

from __future__ import annotations

import difflib
import glob
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from orchestrator.errors import ConfigError, SpecError, ToolInputError
from orchestrator.guard.policy import PolicyDoc, Tier
from orchestrator.run.spec_input import check_size
from orchestrator.run.steps import CountRange, Step
from orchestrator.run.targets import TargetEntry, TargetSpec, Toolchain, resolve_toolchains
from orchestrator.run.templates import render_step, template_problems

__all__ = [
    "JobSpec",
    "ResolvedTarget",
    "STEP_KINDS",
    "Target",
    "TargetSpec",
    "load_spec",
    "parse_spec",
    "resolve",
    "resolve_targets",
]

_STEP_MODELS: dict[str, type[BaseModel]] = {
    model.model_fields["kind"].default: model for model in get_args(get_args(Step)[0])
}
STEP_KINDS: tuple[str, ...] = tuple(_STEP_MODELS)
_KINDS = ", ".join(STEP_KINDS)

_NAME = re.compile(r"[A-Za-z0-9._-]+(?: +[A-Za-z0-9._-]+)*")
_GLOB_CHARS = frozenset("*?[")
_DUPLICATE_STEP_NAME = "duplicate_step_name"
_STEP_TEMPLATES = "step_templates"


_Target = Annotated[
    Union[Annotated[TargetEntry, Tag("path")], Annotated[TargetSpec, Tag("mapping")]],
    Discriminator(lambda v: "path" if isinstance(v, str) else "mapping"),
]


class AgentSpec(BaseModel):
    """The agent part of a job: a model works on each target until it is done,
    after the recipe steps (if any). `provider` and `model` default to the
    configuration's; the scripted provider's turns come inline (`turns`) or
    from a YAML file (`script`, relative to the spec), which submitting reads
    into `turns` so the recorded job holds everything a worker needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instruction: str = ""  # what to do; a chat session has none
    provider: Literal["scripted", "openai"] | None = None
    model: str | None = None
    script: str | None = None
    turns: tuple[dict[str, Any], ...] | None = None
    max_turns: int = Field(default=30, ge=1, le=1000)
    max_invalid_calls: int = Field(default=5, ge=0, le=1000)
    token_budget: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_script(self) -> AgentSpec:
        if self.script is not None and self.turns is not None:
            raise ValueError(
                "give the scripted model's turns inline (`turns`) or in a file (`script`), not both"
            )
        if self.turns is not None:  # the same checks a script file gets, at submit
            from orchestrator.agent.providers.scripted import check_turns

            try:
                check_turns(self.turns, "agent.turns")
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return self


class JobSpec(BaseModel):
    """A batch refactor job: the same chain of steps (and/or an agent) run on
    every target."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    description: str = ""
    # Directories, or globs of directories (`repos/*`), in order; or mappings
    # `{path, vars, toolchains}`. Relative ones resolve against the base
    # directory given to `resolve`.
    targets: tuple[_Target, ...] = Field(min_length=1)
    # Directories (a venv, a pyenv version, a node install) a sandboxed command
    # gets read-only with their bin/ first on PATH; relative ones are inside
    # each target (`.venv`). A target's own `toolchains` replace these.
    toolchains: tuple[Toolchain, ...] = ()
    # An agent that works on each target after the steps (declared first, so
    # the check that there is something to do can see it).
    agent: AgentSpec | None = None
    # The refactor chain, run in order on each target.
    steps: tuple[Step, ...] = ()
    # At most this many targets run at once; None: as many as the workers take.
    concurrency: int | None = Field(default=None, ge=1)
    # The job's own policy (docs/security.md); combined with `--policy` files
    # and `--tier`, the strictest setting wins.
    policy: PolicyDoc | None = None
    tier: Tier | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                "use only letters, digits, '.', '_', '-' and single spaces between words"
            )
        return value

    @field_validator("targets", mode="before")
    @classmethod
    def _one_target(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value  # `targets: repos/*`

    @field_validator("agent")
    @classmethod
    def _instructed(cls, agent: AgentSpec | None) -> AgentSpec | None:
        if agent is not None and not agent.instruction.strip():
            raise ValueError("a job's agent needs an `instruction`: what to do on each target")
        return agent

    @field_validator("steps")
    @classmethod
    def _unique_names(cls, steps: tuple[Step, ...], info: ValidationInfo) -> tuple[Step, ...]:
        if not steps and info.data.get("agent") is None:
            raise PydanticCustomError(
                "no_work", "a job needs at least one step, or an `agent` block"
            )
        dups = _duplicate_step_names(steps)
        if dups:
            listed = "; ".join(
                f"steps[{i}] repeats {name!r} of steps[{first}]" for i, name, first in dups
            )
            raise PydanticCustomError(
                _DUPLICATE_STEP_NAME,
                "step names must be unique within a job: {listed}",
                {"listed": listed},
            )
        return steps

    @field_validator("steps")
    @classmethod
    def _templates(cls, steps: tuple[Step, ...], info: ValidationInfo) -> tuple[Step, ...]:
        targets = info.data.get("targets")
        if targets is not None:
            found = template_problems(steps, [_as_mapping(t) for t in targets])
            if found:
                raise PydanticCustomError(
                    _STEP_TEMPLATES,
                    "{joined}",
                    {"joined": "; ".join(text for _, text in found), "found": found},
                )
        return steps

    def target_specs(self) -> tuple[TargetSpec, ...]:
        """Every `targets` entry as a mapping (a plain one has no vars)."""
        return tuple(_as_mapping(t) for t in self.targets)

    def steps_for(self, variables: Mapping[str, str]) -> tuple[Step, ...]:
        """The steps with a target's variables substituted (checked at
        validation for every target of the spec)."""
        return tuple(render_step(s, variables) for s in self.steps)

    def toolchains_for(self, target_path: Path, entry: TargetSpec | None = None) -> tuple[str, ...]:
        """The toolchains of a target (`entry`'s own, else the job's) as
        absolute directories; ToolInputError says which one is missing or
        leads out of the target."""
        wanted = entry.toolchains if entry and entry.toolchains is not None else self.toolchains
        dirs, error = resolve_toolchains(wanted, target_path)
        if error is not None:
            raise ToolInputError(error)
        return dirs


def _as_mapping(target: str | TargetSpec) -> TargetSpec:
    return TargetSpec(path=target) if isinstance(target, str) else target


def _duplicate_step_names(steps: Iterable[Any]) -> list[tuple[int, str, int]]:
    """(index, name, index of its first use) for each step reusing a name. Works
    on validated steps and on the raw YAML values alike."""
    first: dict[str, int] = {}
    dups = []
    for i, step in enumerate(steps):
        name = step.get("name") if isinstance(step, dict) else getattr(step, "name", None)
        if not isinstance(name, str):
            continue
        if name in first:
            dups.append((i, name, first[name]))
        else:
            first[name] = i
    return dups


# --- loading -------------------------------------------------------------------------


def load_spec(path: Path) -> JobSpec:
    """Read and validate a job spec file; SpecError lists every problem."""
    source = str(path)
    try:
        check_size(os.stat(path).st_size, source)
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            source, [f"the file is not UTF-8 text (byte {exc.start}); save it as UTF-8"]
        ) from None
    except OSError as exc:
        raise SpecError(source, [f"cannot read the file: {exc.strerror or exc}"]) from None
    return with_script(parse_spec(text, source), Path(path).parent, source)


def with_script(spec: JobSpec, base_dir: Path, source: str = "<string>") -> JobSpec:
    """The spec with its agent's `script` file (relative to the spec) read into
    `turns`: the recorded job then holds all a worker on another machine needs."""
    agent = spec.agent
    if agent is None or agent.script is None:
        return spec
    from orchestrator.agent.providers.scripted import load_script

    try:
        turns = load_script(base_dir / agent.script)
    except ConfigError as exc:
        raise SpecError(source, [f"agent.script: {exc}"]) from None
    return spec.model_copy(
        update={"agent": agent.model_copy(update={"script": None, "turns": tuple(turns)})}
    )


def parse_spec(text: str, source: str = "<string>", size: int | None = None) -> JobSpec:
    """Validate a job spec given as YAML text (`size`: as sent, if it was not)."""
    check_size(len(text.encode("utf-8", "surrogatepass")) if size is None else size, source)
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # a character YAML does not allow (ReaderError)
        raise SpecError(source, [_yaml_problem(exc)]) from None
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise SpecError(source, [_yaml_problem(exc)]) from None
        except RecursionError:
            raise SpecError(source, ["the YAML is nested too deeply to read"]) from None
        if root is None or (isinstance(root, yaml.ScalarNode) and root.tag.endswith(":null")):
            raise SpecError(
                source,
                ["the spec is empty; a job spec is a mapping with `name`, `targets` and `steps`"],
            )
        try:
            data = loader.construct_document(root)
        except yaml.YAMLError as exc:
            raise SpecError(source, [_yaml_problem(exc)]) from None
        except (ValueError, TypeError) as exc:  # e.g. `!!int abc`
            raise SpecError(
                source,
                [f"a value cannot be read ({exc}); check the explicit `!!` tags in the spec"],
            ) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise SpecError(
            source,
            [
                f"(top level) {_at(root)}: a job spec is a mapping with `name`, `targets` and "
                f"`steps`, not {_node_kind(root)}"
            ],
        )

    located = _duplicate_keys(root)
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        errors = [e for e in exc.errors(include_url=False) if e["type"] != _DUPLICATE_STEP_NAME]
        located += [
            _locate(root, e, errors)
            for e in errors
            if not _redundant(e, errors) and e["type"] != _STEP_TEMPLATES
        ]
        for e in errors:  # one problem per target and step, at the step
            for index, text in e["ctx"]["found"] if e["type"] == _STEP_TEMPLATES else ():
                node, _, shown = _walk(root, ("steps", index))
                located.append((node.start_mark, f"{_dotted(shown)} {_at(node)}: {text}"))
    else:
        if not located:
            return spec
    # The model only compares step names once every step validates; the raw
    # values let a spec with other mistakes report its duplicates too.
    raw_steps = data.get("steps")
    if isinstance(raw_steps, list):
        for i, name, first in _duplicate_step_names(raw_steps):
            node, _, shown = _walk(root, ("steps", i, "name"))
            located.append(
                (
                    node.start_mark,
                    f"{_dotted(shown)} {_at(node)}: step name "
                    f"{name!r} is already used by steps[{first}]; step names must be "
                    "unique within a job",
                )
            )
    located.sort(key=lambda item: (item[0].line, item[0].column))
    problems = list(dict.fromkeys(text for _, text in located))
    raise SpecError(source, problems)


# --- positions -----------------------------------------------------------------------


def _at(node: yaml.Node) -> str:
    return _mark(node.start_mark)


def _mark(mark: yaml.Mark) -> str:
    return f"(line {mark.line + 1}, column {mark.column + 1})"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"YAML syntax error: {exc}"
    mark = exc.problem_mark or exc.context_mark
    where = f" {_mark(mark)}" if mark is not None else ""
    problem = exc.problem or exc.context or "invalid YAML"
    if exc.context and exc.problem:
        since = ""
        if exc.context_mark is not None and exc.context_mark is not mark:
            since = f" {_mark(exc.context_mark)}"
        problem = (
            f"{exc.context}{since}, {problem}"
            if problem.startswith("but ")
            else f"{problem} ({exc.context}{since})"
        )
    if "'\\t'" in problem:
        problem += "; indent with spaces, YAML does not allow tabs there"
    return f"YAML syntax error{where}: {problem}"


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return f"a mapping tagged {node.tag}"  # `!!set {a, b}` and the like
    return f"the scalar {node.value!r}"


def _duplicate_keys(root: yaml.Node) -> list[tuple[yaml.Mark, str]]:
    """Every key repeated in a mapping, anywhere in the tree."""
    found: list[tuple[yaml.Mark, str]] = []
    seen: set[int] = set()

    def visit(node: yaml.Node, path: list[str | int]) -> None:
        if id(node) in seen:  # an alias: its anchor was already visited
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                visit(item, path + [i])
        elif isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], yaml.Node] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    ident = (key.tag, key.value)
                    if ident in first:
                        found.append(
                            (
                                key.start_mark,
                                (
                                    f"{_dotted(path + [key.value])} {_at(key)}: duplicate key "
                                    f"{key.value!r}, first at line {first[ident].start_mark.line + 1}; "
                                    "YAML keeps only the last value, so remove or rename one"
                                ),
                            )
                        )
                    else:
                        first[ident] = key
                    visit(value, path + [key.value])
                else:
                    visit(value, path)

    visit(root, [])
    return found


def _lookup(node: yaml.MappingNode, part: object) -> tuple[yaml.Node, yaml.Node] | None:
    """The (key, value) nodes of `part` in a mapping, following `<<` merges."""
    merges = []
    for key, value in reversed(node.value):  # PyYAML keeps the last of duplicates
        if not isinstance(key, yaml.ScalarNode):
            continue
        if key.tag == "tag:yaml.org,2002:merge":
            merges += value.value if isinstance(value, yaml.SequenceNode) else [value]
        elif key.value == str(part):
            return key, value
    for merged in merges:
        if isinstance(merged, yaml.MappingNode) and (pair := _lookup(merged, part)):
            return pair
    return None


def _kind_of(node: yaml.MappingNode) -> str | None:
    pair = _lookup(node, "kind")
    return pair[1].value if pair and isinstance(pair[1], yaml.ScalarNode) else None


def _walk(
    root: yaml.Node, loc: Sequence[str | int]
) -> tuple[yaml.Node, yaml.Node | None, list[str | int]]:
    """The node a pydantic error location points at, the key node when the
    location ends at a key present in the file, and the path as written there.

    Pydantic puts the union tag into locations of discriminated unions
    (`steps.0.replace.pattern`); a part that names no key of the mapping and is
    not the last one is such a tag and is dropped. A last part that names no
    key is a missing field: the mapping that lacks it is the position."""
    node: yaml.Node = root
    key_node: yaml.Node | None = None  # the key of the last part, if present
    shown: list[str | int] = []
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if part == "[key]":  # the error is about the mapping key itself
            node = key_node or node
            continue
        key_node = None
        if isinstance(node, yaml.MappingNode):
            if not last and part == _kind_of(node) and part in _STEP_MODELS:
                continue  # the discriminator tag, not a key
            pair = _lookup(node, part)
            if pair is None and not last:
                continue  # another part pydantic inserted
            if pair is not None:
                key_node, node = pair
            part = str(part)  # a key, even one that looks like a number
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            node = node.value[part]
        elif isinstance(node, yaml.ScalarNode) and isinstance(part, str):
            continue  # a union's tag (a plain target): a scalar has no keys
        shown.append(part)
    return node, key_node, shown


def _dotted(parts: Sequence[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


# --- messages ------------------------------------------------------------------------


def _redundant(err: dict[str, Any], errors: list[dict[str, Any]]) -> bool:
    """A too-short error for a list whose items failed too: pydantic counts only
    the valid items; the items' own errors say what to fix."""
    loc = err["loc"]
    return err["type"] == "too_short" and any(
        e["loc"][: len(loc)] == loc and len(e["loc"]) > len(loc) for e in errors
    )


def _locate(
    root: yaml.Node, err: dict[str, Any], errors: list[dict[str, Any]]
) -> tuple[yaml.Mark, str]:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "union_tag_invalid":
        loc += ("kind",)  # point at the bad value itself
    node, key_node, shown = _walk(root, loc)
    if kind in ("extra_forbidden", "invalid_key") and key_node is not None:
        node = key_node
    return node.start_mark, f"{_dotted(shown)} {_at(node)}: {_message(err, loc)}"


def _message(err: dict[str, Any], loc: tuple[str | int, ...]) -> str:
    kind, value = err["type"], err.get("input")
    is_step = len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int)
    if kind == "union_tag_invalid":
        return f"unknown step kind {err['ctx']['tag']!r}; use one of: {_KINDS}"
    if kind == "union_tag_not_found":
        return f"the step has no `kind`; add `kind:` with one of: {_KINDS}"
    if kind == "model_attributes_type" and is_step and len(loc) == 2:
        return (
            f"a step is a mapping with a `kind` ({_KINDS}) and that kind's fields, "
            f"not {_describe(value)}"
        )
    if kind == "extra_forbidden":
        return _unknown_field(loc)
    if kind == "too_short" and loc in (("steps",), ("targets",)):
        return f"a job needs at least one {loc[0][:-1]}"
    msg: str = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if kind.endswith(("_type", "_parsing")):
        msg += f", got {_describe(value)}"
    return msg


def _unknown_field(loc: tuple[str | int, ...]) -> str:
    field = str(loc[-1])
    model = _model_at(loc[:-1])
    if model is None:
        return f"unknown field {field!r}"
    allowed = [f for f in model.model_fields if f != "kind"]
    close = difflib.get_close_matches(field, allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown field {field!r}; {hint}allowed here: {', '.join(allowed)}"


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model a mapping at `loc` (pydantic's location, with tags) is read as."""
    if not loc:
        return JobSpec
    if loc[0] == "steps" and len(loc) >= 3 and loc[2] in _STEP_MODELS:
        if len(loc) == 3:
            return _STEP_MODELS[str(loc[2])]
        if len(loc) == 4 and loc[3] == "expect":
            return CountRange
    return None


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


# --- targets -------------------------------------------------------------------------


class ResolvedTarget(NamedTuple):
    """One workspace of a job. `path` is absolute with symlinks resolved (None
    when a glob matched nothing); `error` says why the target cannot run."""

    name: str
    path: Path | None
    error: str | None


class Target(NamedTuple):
    """One workspace of a job with what runs there: its entry's variables,
    the steps rendered with them, and its toolchains as absolute directories
    (empty when `error` is set: the target cannot run)."""

    name: str
    path: Path | None
    error: str | None
    vars: Mapping[str, str]
    steps: tuple[Step, ...]
    toolchains: tuple[str, ...]


def resolve_targets(spec: JobSpec, base_dir: Path) -> list[ResolvedTarget]:
    """`resolve` as (display name, path, error)."""
    return [ResolvedTarget(t.name, t.path, t.error) for t in resolve(spec, base_dir)]


def resolve(spec: JobSpec, base_dir: Path) -> list[Target]:
    """The spec's targets, in order, each with its steps and toolchains.

    Relative entries resolve against `base_dir` (the CLI passes the current
    directory, or `--base-dir`); `~` is expanded. An entry with `*`, `?` or `[`
    is a glob: it expands to the directories it matches, sorted (files are
    ignored, hidden names match only an explicit leading dot, `**` crosses
    folders); every match shares the entry's vars and toolchains. Nothing
    here raises for a bad target: a missing path, a file, a glob matching no
    directory or a missing toolchain comes back with its error, so that target
    fails at run time and the others still run. A directory named twice
    (directly, through two globs or through a symlink) is kept once, at its
    first place. Display names are relative to `base_dir` when inside it,
    else absolute, and unique."""
    base = Path(os.path.abspath(base_dir))
    out: list[Target] = []
    seen: set[object] = set()
    names: set[str] = set()

    def add(
        entry: TargetSpec,
        identity: object,
        lexical: str | None,
        path: Path | None,
        error: str | None,
    ) -> None:
        if identity in seen:
            return
        seen.add(identity)
        name = _display(base, lexical) if lexical is not None else entry.path
        unique, n = name, 2
        while unique in names:
            unique, n = f"{name} ({n})", n + 1
        names.add(unique)
        toolchains: tuple[str, ...] = ()
        if path is not None and error is None:
            wanted = spec.toolchains if entry.toolchains is None else entry.toolchains
            toolchains, error = resolve_toolchains(wanted, path)
        steps = spec.steps_for(entry.vars)
        out.append(Target(unique, path, error, entry.vars, steps, toolchains))

    for entry in spec.target_specs():
        for identity, lexical, path, error in _expand(entry.path, base):
            add(entry, identity, lexical, path, error)
    return out


def _expand(entry: str, base: Path) -> list[tuple[object, str | None, Path | None, str | None]]:
    """(identity, lexical path, real path, error) for each directory `entry` names."""
    expanded = os.path.expanduser(entry)
    relative_note = "" if os.path.isabs(expanded) else f" (relative to {base})"
    if _GLOB_CHARS.intersection(entry):
        matches = sorted(
            lexical
            for m in glob.glob(expanded, root_dir=base, recursive=True)
            if os.path.isdir(lexical := os.path.normpath(os.path.join(base, m)))
        )
        if not matches:
            error = (
                f"glob {entry!r} matched no directory{relative_note}; check the pattern "
                "and the base directory"
            )
            return [(("glob", entry), None, None, error)]
        return [
            (real, lexical, real, None)
            for lexical in matches
            for real in [Path(os.path.realpath(lexical))]
        ]
    lexical = os.path.normpath(os.path.join(base, expanded))
    real = Path(os.path.realpath(lexical))
    error = None
    if not os.path.exists(real):
        error = f"target {entry!r} does not exist: {lexical}{relative_note}"
    elif not os.path.isdir(real):
        error = f"target {entry!r} is not a directory: {lexical}"
    return [(real, lexical, real, error)]


def _display(base: Path, lexical: str) -> str:
    """A short name for a target path: relative to `base` when inside it."""
    path = Path(lexical)
    if path == base:
        return base.name or str(base)
    if path.is_relative_to(base):
        return path.relative_to(base).as_posix()
    return str(path)
