"""Requests taken exactly as written: every route of the API is a
`StrictRoute`, which refuses a JSON body naming a key twice (JSON parsers,
FastAPI's too, keep the last value silently, so `{"decision": "deny",
"decision": "approve"}` would be read as what a proxy or log never showed)
with 422 naming the field, before the body is validated. No coercion is the
body models' part (`strict=True`: `"5"` is no number). A route that reads its
raw body itself (POST /jobs: YAML or JSON) checks it there.

A query parameter is text by nature, so a number or a flag there is read
from text, but only in one spelling: `QueryInt` takes decimal digits (not
`1.0`, `+5`, ` 5` or `5_0`, which pydantic's lax mode would take), `QueryBool`
`true` or `false` (not `yes`, `on`, `1`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BeforeValidator

from orchestrator.run.spec_input import duplicate_reason, json_duplicates

__all__ = ["StrictRoute", "QueryInt", "QueryBool"]

_DIGITS = re.compile(r"[0-9]{1,19}")


def _decimal(value: object) -> object:
    if isinstance(value, str) and _DIGITS.fullmatch(value) is None:
        raise ValueError("expected a whole number written in decimal digits only")
    return value


def _flag(value: object) -> object:
    if isinstance(value, str) and value not in ("true", "false"):
        raise ValueError("expected true or false")
    return value


QueryInt = Annotated[int, BeforeValidator(_decimal)]
QueryBool = Annotated[bool, BeforeValidator(_flag)]


class StrictRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:  # no body model: nothing parsed from the body here
            return handler

        async def strict(request: Request) -> Response:
            raw = await request.body()  # kept on the request: the handler reads it again
            if raw.strip() and _json(request.headers.get("content-type", "")):
                try:
                    found = json_duplicates(raw)
                except ValueError:
                    found = []  # not JSON: the handler says so
                if found:
                    raise RequestValidationError(
                        [
                            {
                                "loc": ("body", *loc),
                                "msg": duplicate_reason(key),
                                "type": "duplicate_key",
                            }
                            for loc, key in found
                        ]
                    )
            return await handler(request)

        return strict


def _json(content_type: str) -> bool:
    kind = content_type.split(";")[0].strip().lower()
    return kind in ("", "application/json") or kind.endswith("+json")
