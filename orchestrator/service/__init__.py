"""The application layer: what the CLI, the API and chat all do, once.

`dispatch.Dispatcher` is how orchestrator/ sends work to the workers without
importing `tasks/`; `workflows` holds the use cases (submit, answer, cancel,
continue) written against the store and dispatcher they are given.
"""
