"""Deferred imports: the one place code imports a module on first use.

Two reasons to defer, and no others:

- start-up time: `orchestrator --help` must start as fast as `celery --help`
  (`bench/cli_startup.py`), so a command module names its heavy dependencies
  (SQLAlchemy, Alembic, the runner, the payload models) with `module()`; the
  import happens when an attribute is first read, inside the command that
  needs it;
- wiring: a composition root names an implementation that lives above
  `orchestrator/` (the Celery dispatcher in `tasks/`) with `attr()`, the way
  `celery -A` names an app, so `orchestrator/` never imports `tasks/`.

Anything else imports at the top of the module, where a reader looks.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any


def module(name: str) -> ModuleType:
    """`name`, imported when one of its attributes is first read.

    The import is the ordinary one, parents first, so a package's `__init__`
    runs before its submodule as always; nothing at all runs before then
    (finding a submodule would already run its package's `__init__`)."""
    return sys.modules.get(name) or _Deferred(name)


class _Deferred(ModuleType):
    """Stands for a module until an attribute is read; then imports it and
    hands out the real module's attributes."""

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self.__name__), attr)


def attr(ref: str) -> Any:
    """The object `ref` names, as "package.module:Name" (imported now)."""
    mod, _, name = ref.partition(":")
    obj: Any = importlib.import_module(mod)
    for part in filter(None, name.split(".")):
        obj = getattr(obj, part)
    return obj
