"""The steps of a refactor chain: what a job spec says, and the arguments each
tool adapter takes. A step is one turn of a recipe session."""

from __future__ import annotations

import re
import shlex
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from orchestrator.sandbox.plan import forbidden_env

# A `{{ ... vars ... }}` or `{% ... vars ... %}` span stays inside one word when
# a command string is split, so `sed s/{{ vars.old }}/x/` keeps its template
# whole for the per-target substitution (orchestrator.run.templates).
_SPAN = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)
_VARS = re.compile(r"\bvars\b")
_HELD = re.compile("\ue000(\\d+)\ue001")  # a span's stand-in while shlex splits


def _split_command(value: str) -> tuple[str, ...]:
    """shlex's split, with template spans that use `vars` kept whole."""
    spans: list[str] = []

    def hold(m: re.Match[str]) -> str:
        if not _VARS.search(m[0]):
            return m[0]
        spans.append(m[0])
        return f"\ue000{len(spans) - 1}\ue001"

    parts = shlex.split(_SPAN.sub(hold, value))
    return tuple(_HELD.sub(lambda m: spans[int(m[1])], part) for part in parts)


class CountRange(BaseModel):
    """`expect: 3` (exactly), or `expect: {min: 1, max: 40}` (either bound optional)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    min: StrictInt | None = Field(default=None, ge=0)
    max: StrictInt | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _exact(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            return {"min": value, "max": value}
        return value

    @model_validator(mode="after")
    def _ordered(self) -> CountRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self

    def contains(self, n: int) -> bool:
        return (self.min is None or n >= self.min) and (self.max is None or n <= self.max)

    def describe(self) -> str:
        if self.min == self.max:
            return f"exactly {self.min}"
        if self.max is None:
            return f"at least {self.min}"
        if self.min is None:
            return f"at most {self.max}"
        return f"between {self.min} and {self.max}"


# Control characters a step's text may not hold (strict input, issue 16): NUL
# cannot reach a program at all, and the others hide what a line does when it
# is shown (ESC, CR, backspace). Commands, patterns and replacements keep
# tab and newline (a `bash -c` script has lines); names, paths, globs, URLs
# and environment names keep none.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_CONTROL_OR_LINE = re.compile(r"[\x00-\x1f\x7f]")
_LINES_OK = frozenset({"command", "pattern", "replacement"})


def _no_control(value: str, field: str) -> None:
    found = (_CONTROL if field in _LINES_OK else _CONTROL_OR_LINE).search(value)
    if found is not None:
        raise ValueError(
            f"{field} holds the control character {found[0]!r} at offset {found.start()}; "
            "write it out (e.g. as an escape the program understands) or remove it"
        )


class _Step(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str | None = None

    @field_validator(
        "name",
        "path",
        "cwd",
        "glob",
        "command",
        "pattern",
        "replacement",
        "url",
        "query",
        "selector",
        check_fields=False,
    )
    @classmethod
    def _plain_text(cls, value: object, info: ValidationInfo) -> object:
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, str):
                _no_control(item, str(info.field_name))
        return value

    continue_on_error: StrictBool = False
    timeout_s: StrictFloat = Field(default=300.0, gt=0, le=86400)

    @property
    def label(self) -> str:
        return self.name or self.kind  # type: ignore[attr-defined,no-any-return]

    # Whether running the step twice is harmless. A redelivered task re-runs an
    # interrupted idempotent step; a non-idempotent one is recovered from its
    # recorded plan (file steps) or surfaced as interrupted (shell).
    idempotent: StrictBool = False


class _Walking(_Step):
    """A step that walks the target's files the way ripgrep does: what
    `.gitignore`, `.ignore`, `.rgignore` and hidden names hide is skipped
    (orchestrator.tools.ignore) unless these say otherwise (rg's flags)."""

    hidden: StrictBool = False  # rg --hidden: also files and folders named `.x`
    no_ignore: StrictBool = False  # rg --no-ignore: ignore files do not apply


class SearchStep(_Walking):
    kind: Literal["search"] = "search"
    pattern: str = Field(min_length=1)
    literal: StrictBool = False
    ignore_case: StrictBool = False
    glob: tuple[str, ...] = ()  # include globs relative to the target; empty = all files
    expect: CountRange | None = None  # fail the step if the match count is outside
    max_output_bytes: StrictInt = Field(default=64 * 1024, gt=0)
    idempotent: StrictBool = True


class ReplaceStep(_Walking):
    kind: Literal["replace"] = "replace"
    pattern: str = Field(min_length=1)
    replacement: str
    literal: StrictBool = False
    ignore_case: StrictBool = False
    glob: tuple[str, ...] = ()
    expect: CountRange | None = None  # replacements across all files


class WriteStep(_Step):
    kind: Literal["write"] = "write"
    path: str = Field(min_length=1)
    content: str
    overwrite: StrictBool = True


class PatchStep(_Step):
    kind: Literal["patch"] = "patch"
    diff: str = Field(min_length=1)  # a unified diff, paths relative to the target (a/ b/ ok)


class ReadStep(_Step):
    """A file's text (capped), for agents and for checking what a policy lets through."""

    kind: Literal["read"] = "read"
    path: str = Field(min_length=1)
    max_output_bytes: StrictInt = Field(default=64 * 1024, gt=0)
    idempotent: StrictBool = True


class ListStep(_Walking):
    """The files under a folder of the target (the policy's denied files left out)."""

    kind: Literal["list"] = "list"
    path: str = "."
    glob: tuple[str, ...] = ()
    max_output_bytes: StrictInt = Field(default=64 * 1024, gt=0)
    idempotent: StrictBool = True


class DeleteStep(_Step):
    """Delete one file (destructive: asks unless the session is elevated)."""

    kind: Literal["delete"] = "delete"
    path: str = Field(min_length=1)


class ShellStep(_Step):
    kind: Literal["shell"] = "shell"
    # argv list, or a command string split with shlex (no shell is involved).
    command: tuple[str, ...]
    cwd: str = "."
    env: dict[str, str] = {}
    max_output_bytes: StrictInt = Field(default=64 * 1024, gt=0)
    ok_exit_codes: tuple[StrictInt, ...] = (0,)

    @field_validator("command", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                parts = _split_command(value)
            except ValueError as exc:
                raise ValueError(f"cannot split command {value!r}: {exc}") from exc
            if not parts:
                raise ValueError("command is empty")
            return tuple(parts)
        return value

    @field_validator("command")
    @classmethod
    def _nonempty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("command is empty")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        """Checked when the job is submitted, not when the step runs: names the
        sandbox refuses (`sandbox.plan.forbidden_env`), and text no
        environment can hold."""
        bad = forbidden_env(list(value))
        if bad:
            raise ValueError(
                f"sets {', '.join(bad)}, which the sandbox refuses: they make programs "
                "load or run other code (LD_*, BASH_ENV, ENV, exported functions) or change "
                "how git treats the repository (GIT_*, but for GIT_AUTHOR_* and "
                "GIT_COMMITTER_* NAME, EMAIL and DATE). Remove them"
            )
        for name, text in value.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if "\x00" in text:
                raise ValueError(f"the value of {name} holds a NUL byte, which no program receives")
        return value


class FetchStep(_Step):
    """An HTTP(S) GET under the session's egress rules (docs/network.md): the
    status, the headers that matter and the body as text (HTML as Markdown)."""

    kind: Literal["fetch"] = "fetch"
    url: str = Field(min_length=1, max_length=8192)
    max_bytes: StrictInt | None = Field(default=None, gt=0)  # body cap; settings bound it
    max_redirects: StrictInt | None = Field(default=None, ge=0, le=30)
    max_output_bytes: StrictInt = Field(default=64 * 1024, gt=0)
    idempotent: StrictBool = True


class WebSearchStep(_Step):
    """A web search through the configured provider (SearxNG or Brave)."""

    kind: Literal["web_search"] = "web_search"
    query: str = Field(min_length=1, max_length=2000)
    limit: StrictInt = Field(default=10, ge=1, le=50)
    max_output_bytes: StrictInt = Field(default=64 * 1024, gt=0)
    idempotent: StrictBool = True


class BrowserStep(_Step):
    """A page rendered by Chromium (orchestrator.tools.web.browser): its text, a
    screenshot kept as an artifact, after a few allowed actions."""

    kind: Literal["browser"] = "browser"
    url: str = Field(min_length=1, max_length=8192)
    output: Literal["text", "screenshot"] = "text"
    actions: tuple[dict[str, Any], ...] = ()
    selector: str | None = None
    wait_until: Literal["load", "domcontentloaded", "networkidle"] = "load"
    full_page: StrictBool = False
    max_output_bytes: StrictInt = Field(default=64 * 1024, gt=0)
    idempotent: StrictBool = True

    def request_fields(self) -> dict[str, Any]:
        return self.model_dump(
            include={
                "url",
                "output",
                "actions",
                "selector",
                "wait_until",
                "full_page",
                "max_output_bytes",
            },
            exclude_none=True,
        )

    @model_validator(mode="after")
    def _request_valid(self) -> BrowserStep:
        try:
            from orchestrator.tools.web.browser import BrowserRequest
        except ImportError:
            return self  # checked when the step runs (the tool says it is missing)
        BrowserRequest.model_validate(self.request_fields())
        return self


NETWORK_STEPS = (FetchStep, WebSearchStep, BrowserStep)

Step = Annotated[
    Union[
        SearchStep,
        ReplaceStep,
        WriteStep,
        PatchStep,
        ReadStep,
        ListStep,
        DeleteStep,
        ShellStep,
        FetchStep,
        WebSearchStep,
        BrowserStep,
    ],
    Field(discriminator="kind"),
]
