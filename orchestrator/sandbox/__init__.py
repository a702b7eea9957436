"""The sandbox every shell command runs in (`runtime` is its public face).

Its modules build on the file tools (`tools.base`, `tools.files`,
`tools.jail`, `tools.paths`) and `tools.shell` builds on them; importing the
tools package first keeps that order whichever side a program imports first.
"""

import orchestrator.tools  # noqa: F401
