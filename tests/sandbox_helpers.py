"""What tests running commands in the sandbox share."""

from __future__ import annotations

import shutil
import sys

from orchestrator.sandbox.host import probe
from orchestrator.sandbox.system import SYSTEM_DIRS, in_view

# A python3 the sandbox shows (a system one): the worker's own may be a venv or
# a pyenv version, which a call sees only when it is named as a toolchain.
SANDBOX_PY = (
    shutil.which(
        "python3",
        path=":".join(d for d in probe().path.split(":") if in_view(d, SYSTEM_DIRS)),
    )
    or sys.executable
)
