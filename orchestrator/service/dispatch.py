"""The dispatcher: how orchestrator/ sends work to the workers.

orchestrator/ never imports `tasks/` (the arrow goes `tasks -> orchestrator`).
Code that enqueues receives a `Dispatcher`; the implementation around the
Celery app is `tasks.dispatch.CeleryDispatcher`, built by `tasks.app.dispatcher`. A composition root
(the CLI's start-up, the API's `create_app`) names it with
`lazy.attr(CELERY_DISPATCHER)` and builds it from its settings, the way
`celery -A` names an app: importing is wiring, done once at the edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from orchestrator import lazy

if TYPE_CHECKING:
    from orchestrator.config.settings import Settings
    from orchestrator.run.runner import Ticket
    from orchestrator.run.steps import Step

# Where the Celery implementation lives: "module:factory(settings) -> Dispatcher".
CELERY_DISPATCHER = "tasks.app:dispatcher"


class Dispatcher(Protocol):
    """Sends a job's or a session's work to the workers; returns at once."""

    def enqueue(self, tickets: Sequence[Ticket], steps: Sequence[Step]) -> None:
        """Enqueue a new job: every ticket's steps (and its agent), in order."""

    def continue_session(self, ticket: Ticket, start: int, steps: Sequence[Step]) -> None:
        """Enqueue one session's steps from index `start` on (after an answer)."""

    def start_agent(self, ticket: Ticket) -> None:
        """Enqueue the agent's next unit of work for the ticket's session."""

    def seal(self, tickets: Sequence[Ticket]) -> None:
        """Sign the heads of ended sessions and their job, if signing is on."""

    def revoke(self, task_id: str) -> None:
        """Stop a running task where the broker can broadcast (no-op otherwise)."""

    def ping(self) -> list[Any]:
        """The workers that answer a ping within a second (empty: none)."""


def celery_dispatcher(settings: Settings) -> Dispatcher:
    """The Celery implementation for `settings`: the one call roots make."""
    factory = lazy.attr(CELERY_DISPATCHER)
    return factory(settings)  # type: ignore[no-any-return]
