"""`orchestrator config check|show|docs`: the configuration, validated and
shown without starting anything (docs/configuration.md).

Exit codes: 0 valid, 2 invalid (or, with `check --strict`, unknown names;
or, with `docs --check`, stale generated files).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
import typer
from pydantic import BaseModel
from rich.console import Console

from orchestrator.cli.common import err
from orchestrator.config import report as cr

out = Console()

config_app = typer.Typer(
    rich_markup_mode="markdown",
    help="Validate, show and document the configuration.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")


def _json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


@config_app.command("check")
def check(
    json: bool = typer.Option(False, "--json", help="Print {ok, problems, warnings}"),
    strict: bool = typer.Option(
        False, "--strict", help="Unknown ORCH_* variables and TOML keys are errors too"
    ),
) -> None:
    """Validate the configuration (environment, .env, TOML file) and list every
    problem at once, with where each value came from. Starts nothing."""
    _, src, problems = cr.build()
    unknown = cr.unknown(src)
    ok = not problems and not (strict and unknown)
    if json:
        _json(
            {
                "ok": ok,
                "problems": [cr.to_json(p) for p in problems],
                "warnings": [cr.to_json(u) for u in unknown],
                "config_file": str(src.toml_path) if src.toml_path else None,
                "dotenv_file": str(src.dotenv_path) if src.dotenv_path else None,
            }
        )
    else:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        for u in unknown:
            print(f"{'error' if strict else 'warning'}: {u}", file=sys.stderr)
        if ok:
            print(f"configuration is valid ({_where(src)})")
    raise typer.Exit(0 if ok else 2)


def _where(src: cr.Sources) -> str:
    parts = ["environment"]
    if src.dotenv_path:
        parts.append(f".env {src.dotenv_path}")
    if src.toml_path:
        parts.append(f"TOML {src.toml_path}")
    return "read from " + ", ".join(parts) + ", defaults"


@config_app.command("show")
def show(
    json: bool = typer.Option(
        False, "--json", help="Print {settings: {name: {value, source, secret}}} as JSON"
    ),
) -> None:
    """The effective configuration, each value with its source; secrets masked."""
    settings, src, problems = cr.build()
    if problems:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        raise typer.Exit(2)
    secret = set(cr.secret_fields())
    rows = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        where = cr.origin(src, name)
        if name in secret:
            shown: Any = None if value is None else "***"
        else:
            shown = _plain(value)
            if isinstance(shown, str):
                shown = cr.shown(shown)
            elif shown is not None and not isinstance(shown, (bool, int, float)):
                shown = orjson.loads(cr.shown(orjson.dumps(shown).decode()))
        rows[name] = {
            "value": shown,
            "source": str(where),
            "secret": name in secret,
            "variable": cr.PREFIX + name.upper(),
        }
    if json:
        _json({"settings": rows, "warnings": [cr.to_json(u) for u in cr.unknown(src)]})
        return
    for row in rows.values():
        value = row["value"]
        text = "unset" if value is None else cr.env_text(value)
        print(f"{row['variable']}={text}    # {row['source']}")


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@config_app.command("docs")
def docs(
    fmt: str = typer.Option(
        "markdown", "--format", help="env (.env.example) or markdown (docs/configuration.md)"
    ),
    write: bool = typer.Option(
        False,
        "--write",
        help="Regenerate .env.example and docs/configuration.md in the source tree",
    ),
    check_: bool = typer.Option(False, "--check", help="Exit 2 if either committed file is stale"),
) -> None:
    """The configuration reference, generated from the Settings model."""
    if write or check_:
        stale = []
        for kind, path in cr.GENERATED.items():
            text = cr.render(kind)
            current = path.read_text(encoding="utf-8") if path.exists() else None
            if current != text:
                stale.append(str(path))
                if write:
                    path.write_text(text, encoding="utf-8")
        if write:
            out.print(f"wrote {', '.join(stale) or 'nothing (up to date)'}", markup=False)
            return
        if stale:
            err.print(f"stale: {', '.join(stale)}; run `{cr.REGENERATE}`", markup=False)
            raise typer.Exit(2)
        return
    if fmt not in ("env", "markdown"):
        err.print(f"--format {fmt!r}: use env or markdown", markup=False)
        raise typer.Exit(2)
    sys.stdout.write(cr.render(fmt))
