"""Where each setting came from, what is wrong with it, and the generated
reference (`.env.example`, docs/configuration.md).

`load()` is what `config.get_settings()` runs: it builds `Settings` and, when
that fails, reports every problem at once, each with its variable, what is
wrong, an example of a valid value and where the bad value was read from (an
environment variable, the `.env` file, the TOML file and key, or the
default). Unknown `ORCH_*` variables and TOML keys are warned about with a
"did you mean" (a typo'd setting silently ignored is a classic outage);
`orchestrator config check --strict` turns the warnings into errors.
"""

from __future__ import annotations

import difflib
import inspect
import json
import logging
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo

from orchestrator.config.seen import process_values
from orchestrator.errors import ConfigError

log = logging.getLogger("orchestrator.config.settings")

PREFIX = "ORCH_"
# ORCH_* variables that are not settings: the config file's name, the test
# suite's switches, and named secrets (orchestrator.config.secrets).
NOT_SETTINGS = frozenset({"ORCH_CONFIG", "ORCH_REQUIRE_SERVICES"})
NOT_SETTINGS_PREFIXES = ("ORCH_SECRET_", "ORCH_TEST_")
REGENERATE = "orchestrator config docs --write"


@dataclass(frozen=True)
class Origin:
    kind: Literal["env", "dotenv", "toml", "default"]
    path: str = ""  # the .env or TOML file
    key: str = ""  # the variable or TOML key

    def __str__(self) -> str:
        return {
            "env": f"environment variable {self.key}",
            "dotenv": f".env file {self.path} ({self.key})",
            "toml": f"TOML file {self.path} (key {self.key})",
            "default": "default",
        }[self.kind]


@dataclass(frozen=True)
class Problem:
    setting: str  # dotted path: model_timeout_s, api_tokens.0.principal
    variable: str  # ORCH_MODEL_TIMEOUT_S
    message: str
    got: str  # shown masked; "(hidden)" for secrets
    example: str
    source: str

    def __str__(self) -> str:
        got = f" (got {self.got})" if self.got else ""
        return (
            f"{self.variable}: {self.message}{got}; from {self.source}; "
            f"example of a valid value: {self.example}"
        )


@dataclass(frozen=True)
class Unknown:
    name: str  # as written: ORCH_MODEL_NAEM or model_naem
    source: str
    suggestion: str | None

    def __str__(self) -> str:
        hint = f"; did you mean {self.suggestion}?" if self.suggestion else ""
        return f"{self.name} ({self.source}) is not a setting and is ignored{hint}"


@dataclass
class Sources:
    env: dict[str, str]  # ORCH_* variables, upper-cased names
    dotenv_path: Path | None = None
    dotenv: dict[str, str] = field(default_factory=dict)
    toml_path: Path | None = None
    toml: dict[str, Any] = field(default_factory=dict)
    errors: list[Problem] = field(default_factory=list)  # files that cannot be read


_model: type[BaseModel] | None = None


def use_model(model: type[BaseModel]) -> None:
    """The settings model this module reports on: `config.settings` hands
    `Settings` over when it is defined, so it can call `load()` here while
    this module never imports it (no import cycle)."""
    global _model
    _model = model


def _settings_cls() -> type[BaseModel]:
    assert _model is not None, "orchestrator.config.settings registers the model on import"
    return _model


def gather(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Sources:
    """The raw inputs, read the way `Settings` reads them."""
    environ = os.environ if environ is None else environ
    src = Sources(env={k.upper(): v for k, v in environ.items() if k.upper().startswith(PREFIX)})
    dotenv = (cwd or Path.cwd()) / ".env"
    if dotenv.is_file():
        from dotenv import dotenv_values

        src.dotenv_path = dotenv.resolve()
        src.dotenv = {
            k.upper(): v or ""
            for k, v in dotenv_values(dotenv).items()
            if k.upper().startswith(PREFIX)
        }
    toml = src.env.get("ORCH_CONFIG")
    if toml:
        path = Path(toml).expanduser()
        src.toml_path = path.resolve() if path.exists() else path
        try:
            src.toml = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            src.errors.append(
                Problem(
                    "config",
                    "ORCH_CONFIG",
                    "the configuration file does not exist",
                    toml,
                    "/etc/orchestrator/config.toml",
                    "environment variable ORCH_CONFIG (or --config)",
                )
            )
        except (OSError, UnicodeDecodeError) as exc:
            src.errors.append(
                Problem(
                    "config",
                    "ORCH_CONFIG",
                    f"cannot read the file: {exc}",
                    toml,
                    "/etc/orchestrator/config.toml",
                    "environment variable ORCH_CONFIG (or --config)",
                )
            )
        except tomllib.TOMLDecodeError as exc:
            src.errors.append(
                Problem(
                    "config",
                    "ORCH_CONFIG",
                    f"not valid TOML: {exc}",
                    toml,
                    'model_name = "gpt-4o-mini"',
                    f"TOML file {src.toml_path}",
                )
            )
    return src


def origin(src: Sources, name: str) -> Origin:
    """Where setting `name` (a field name) is read from, strongest source first."""
    var = PREFIX + name.upper()
    for kind, values, path in (("env", src.env, ""), ("dotenv", src.dotenv, src.dotenv_path)):
        hits = [k for k in values if k == var or k.startswith(var + "__")]
        if hits:
            return Origin(kind, str(path or ""), sorted(hits)[0])  # type: ignore[arg-type]
    if name in src.toml:
        return Origin("toml", str(src.toml_path), name)
    return Origin("default")


def unknown(src: Sources, names: list[str] | None = None) -> list[Unknown]:
    names = names if names is not None else list(_settings_cls().model_fields)
    variables = {PREFIX + n.upper(): n for n in names}
    found: list[Unknown] = []

    def suggest(word: str, pool: list[str]) -> str | None:
        close = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
        return close[0] if close else None

    for kind, values, path in (("env", src.env, None), ("dotenv", src.dotenv, src.dotenv_path)):
        for var in sorted(values):
            top = var.split("__", 1)[0]
            if top in variables or var in NOT_SETTINGS or var.startswith(NOT_SETTINGS_PREFIXES):
                continue
            where = "environment" if kind == "env" else f".env file {path}"
            found.append(Unknown(var, where, suggest(top, list(variables))))
    for key in sorted(src.toml):
        if key not in names:
            found.append(Unknown(key, f"TOML file {src.toml_path}", suggest(key, names)))
    return found


# -- describing fields -----------------------------------------------------------


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or any(_is_secret(a) for a in typing.get_args(annotation))


def secret_fields() -> list[str]:
    return [n for n, f in _settings_cls().model_fields.items() if _is_secret(f.annotation)]


def _type_text(annotation: Any) -> str:
    origin_, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin_ is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin_ in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        text = " or ".join(_type_text(a) for a in rest)
        return f"{text}, or unset" if len(rest) < len(args) else text
    if origin_ in (tuple, list):
        return f"JSON list of {_type_text(args[0]) if args else 'values'}"
    if origin_ is dict:
        return "JSON object"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return f"object ({', '.join(annotation.model_fields)})"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        Path: "path",
        SecretStr: "secret",
    }.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _constraints(info: FieldInfo) -> str:
    words = {
        "gt": ">",
        "ge": ">=",
        "lt": "<",
        "le": "<=",
        "min_length": "length >=",
        "max_length": "length <=",
        "pattern": "matching",
    }
    parts = []
    for meta in info.metadata:
        for attr, word in words.items():
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{word} {value}")
    return ", ".join(parts)


def type_text(info: FieldInfo) -> str:
    text = _type_text(info.annotation)
    extra = _constraints(info)
    return f"{text} ({extra})" if extra else text


def _json_default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        return "(computed)"
    value = info.default
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (tuple, list)):
        return [
            v.model_dump(mode="json")
            if isinstance(v, BaseModel)
            else str(v)
            if isinstance(v, Path)
            else v
            for v in value
        ]
    if isinstance(value, Path):
        return str(value)
    return value


def env_text(value: Any) -> str:
    """A value as it is written in an environment variable."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def example(info: FieldInfo) -> str:
    """A valid value for the field, as written in the environment."""
    extra = info.json_schema_extra
    if isinstance(extra, dict) and "example" in extra:
        return str(extra["example"])
    ann = info.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    core = (
        args[0]
        if typing.get_origin(ann) in (typing.Union, types.UnionType) and len(args) == 1
        else ann
    )
    if _is_secret(ann):
        return "a secret value (prefer a secret file: docs/configuration.md)"
    if typing.get_origin(core) is Literal:
        return " | ".join(str(a) for a in typing.get_args(core))
    match = re.search(r"e\.g\. ([^\s;,]+[^\s;,.)])", info.description or "")
    if match:
        return match.group(1)
    default = _json_default(info)
    if default not in (None, "(computed)", []):
        return env_text(default)
    inner = typing.get_args(core)
    if typing.get_origin(core) in (tuple, list) and inner:
        item = inner[0]
        if typing.get_origin(item) is Literal:
            return json.dumps([typing.get_args(item)[0]])
        if inspect.isclass(item) and issubclass(item, BaseModel):
            return json.dumps([{n: "..." for n, f in item.model_fields.items() if f.is_required()}])
        return '["/path/one", "/path/two"]' if item is Path else '["value"]'
    return {bool: "true", int: "1", float: "1.5", Path: "/path/to/file", str: "text"}.get(
        core, "see docs/configuration.md"
    )


# -- loading -----------------------------------------------------------------------

_URL_PASSWORD = re.compile(r"(?<=://)([^:/@\s]*):([^@/\s]+)@")


def shown(value: Any, secret: bool = False) -> str:
    """A value as it may be printed: secrets hidden, URL passwords masked."""
    if secret:
        return "(hidden)"
    from orchestrator.guard.masking import mask

    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return mask(_URL_PASSWORD.sub(r"\1:***@", text), _known())


def _known() -> list[str]:
    return process_values()


def problems_of(exc: ValidationError, src: Sources) -> list[Problem]:
    fields = _settings_cls().model_fields
    found = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        name = loc[0] if loc else "?"
        info = fields.get(name)
        var = PREFIX + "__".join(loc).upper()
        where = origin(src, name) if info else Origin("default")
        secret = info is not None and _is_secret(info.annotation)
        got = err.get("input")
        if where.kind == "env" or where.kind == "dotenv":
            var = where.key
        got_text = "" if err["type"] == "missing" else shown(got, secret)
        ex = example(info) if info else "see docs/configuration.md"
        found.append(Problem(".".join(loc), var, err["msg"], got_text, ex, str(where)))
    return found


def build(
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[Any, Sources, list[Problem]]:
    """(settings or None, the sources, every problem)."""
    src = gather(environ, cwd)
    if src.errors:
        return None, src, src.errors
    try:
        return _settings_cls()(), src, []
    except ValidationError as exc:
        return None, src, problems_of(exc, src)


def load() -> Any:
    """`Settings`, or a ConfigError listing every problem; warns about unknown names."""
    settings, src, problems = build()
    if problems:
        raise ConfigError(
            "configuration is invalid:\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\nFix these and start again "
            "(`orchestrator config check` lists them without starting anything)."
        )
    for u in unknown(src):
        log.warning("%s", u)
    return settings


def to_json(p: Problem | Unknown) -> dict[str, Any]:
    return asdict(p)


# -- the generated reference ----------------------------------------------------------


def sections() -> list[tuple[str, list[str]]]:
    """The fields of Settings grouped by the `# -- area --` comments of its source."""
    cls = _settings_cls()
    groups: list[tuple[str, list[str]]] = [("general", [])]
    names = set(cls.model_fields)
    for line in inspect.getsource(cls).splitlines():
        head = re.match(r"\s*# -- (.+?) -+\s*$", line)
        if head:
            if head.group(1) == "derived":
                break
            groups.append((head.group(1), []))
            continue
        m = re.match(r"    (\w+)\s*:", line)
        if m and m.group(1) in names:
            groups[-1][1].append(m.group(1))
    listed = {n for _, fs in groups for n in fs}
    rest = [n for n in cls.model_fields if n not in listed]
    if rest:
        groups.append(("other", rest))
    return [(t, fs) for t, fs in groups if fs]


def _default_text(info: FieldInfo) -> str:
    value = _json_default(info)
    return "unset" if value is None else env_text(value) or '""'


def render_env() -> str:
    fields = _settings_cls().model_fields
    lines = [
        "# Every setting of the orchestrator, with its default. GENERATED from",
        f"# orchestrator/config/settings.py by `{REGENERATE}`: do not edit by hand.",
        "# Copy to .env (or export the variables; a TOML file named by ORCH_CONFIG or",
        "# --config takes the same names in lower case, without ORCH_).",
        "# Sources, strongest first: environment, .env, TOML file, default.",
        "",
    ]
    for title, names in sections():
        lines += [f"# -- {title} " + "-" * max(3, 74 - len(title)), ""]
        for name in names:
            info = fields[name]
            for chunk in _wrap(info.description or "", 76):
                lines.append(f"# {chunk}")
            secret = " A SECRET: prefer secrets_dir/" + name if _is_secret(info.annotation) else ""
            lines.append(f"# Type: {type_text(info)}. Default: {_default_text(info)}.{secret}")
            default = _json_default(info)
            value = "" if default is None or _is_secret(info.annotation) else env_text(default)
            lines += [f"#{PREFIX}{name.upper()}={value}", ""]
    return "\n".join(lines).rstrip() + "\n"


def render_markdown() -> str:
    fields = _settings_cls().model_fields
    out = [
        "# Configuration",
        "",
        f"<!-- GENERATED from orchestrator/config/settings.py by `{REGENERATE}`; do not edit by hand. -->",
        "",
        "Every setting is read, strongest first, from the environment (`ORCH_` + the "
        "name in upper case; nested values with `__`), a `.env` file in the current "
        "folder, a TOML file (named by `ORCH_CONFIG` or the global `--config PATH` "
        "option; keys are the names below in lower case), then the default. Lists "
        "and objects are written as JSON in the environment and as TOML arrays and "
        "tables in the file.",
        "",
        "- `orchestrator config check [--json] [--strict]` validates without starting "
        "anything: every problem at once, each with its variable, what is wrong, an "
        "example and where it was read from; unknown `ORCH_*` variables and TOML keys "
        "are warned about with a suggestion (`--strict`: they fail too). Exit 0 or 2.",
        "- `orchestrator config show [--json]` prints the effective configuration, each "
        "value with its source; secrets are masked.",
        "- Secrets (type *secret*) are better kept out of the environment: see "
        "[Secrets in docs/security.md](security.md#secrets) for files, the keychain "
        "and Vault.",
        "",
    ]
    for title, names in sections():
        out += [
            f"## {title[0].upper() + title[1:]}",
            "",
            "| Variable | Type | Default | Description |",
            "| --- | --- | --- | --- |",
        ]
        for name in names:
            info = fields[name]
            desc = (info.description or "").replace("|", "\\|").replace("\n", " ")
            default = _default_text(info).replace("|", "\\|")
            out.append(
                f"| `{PREFIX}{name.upper()}` | {type_text(info).replace('|', '/')} "
                f"| `{default}` | {desc} |"
            )
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or []


ROOT = Path(__file__).resolve().parents[2]
GENERATED = {"env": ROOT / ".env.example", "markdown": ROOT / "docs" / "configuration.md"}


def render(fmt: str) -> str:
    return render_env() if fmt == "env" else render_markdown()
