"""The sandbox every shell command runs in (`runtime` is its public face).

Its modules build on the file tools (`tools.base`, `tools.files`,
`tools.jail`), and `tools.shell` builds on them; neither package's
`__init__` imports anything, so either side can be imported first.
"""
