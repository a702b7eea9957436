"""The Celery app, configured from the one Settings object.

Reliability settings follow DESIGN.md "Execution": late acks, reject on a lost
worker (the message is redelivered), prefetch of one (a long step does not
hold back others), and a visibility timeout above the longest step.
"""

from __future__ import annotations

from celery import Celery

import tasks.broker  # noqa: F401  (registers the orchsqla transport)
import tasks.browser_hooks  # noqa: F401  (closes browsers on task end and worker exit)
import tasks.observe  # noqa: F401  (logs, metrics and traces on Celery's signals)
from orchestrator.config import secrets
from orchestrator.config.settings import Settings, get_settings
from tasks.conf import CELERY_SETTINGS
from tasks.dispatch import CeleryDispatcher


def make_app(settings: Settings) -> Celery:
    if settings.embedded_broker or settings.effective_result_backend.startswith("db+sqlite"):
        # SQLite files in the state folder (a RabbitMQ broker without a
        # result backend keeps its results there too).
        settings.state.mkdir(parents=True, exist_ok=True)
    app = Celery(
        "orchestrator",
        broker=settings.effective_broker_url,
        backend=settings.effective_result_backend,
        amqp="tasks.summary:SummarizingAMQP",  # masked argument summaries
        include=["tasks.steps", "tasks.audit", "tasks.agent"],
    )
    secrets.install(settings)  # log lines mask its secrets
    # What tasks.summary masks in every message's argument summary.
    app.known_secrets = lambda: secrets.known_values(settings)  # type: ignore[attr-defined]
    transport_options: dict[str, object] = {"visibility_timeout": settings.visibility_timeout_s}
    if settings.embedded_broker:
        transport_options["polling_interval"] = settings.embedded_poll_interval_s
    app.conf.update(
        **CELERY_SETTINGS,
        broker_transport_options=transport_options,
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_default_queue="orchestrator",
        worker_consumer="tasks.task_events:CoalescingConsumer",  # task events sent together
        database_engine_options={"connect_args": {"timeout": 60}},
        database_short_lived_sessions=True,
    )
    every = sign_interval(settings)
    if every is not None:
        # For `celery -A tasks.app beat` (server brokers; tasks.audit explains).
        app.conf.beat_schedule = {
            "audit-sign-heads": {
                "task": "orchestrator.audit.sign_heads",
                "schedule": every,
                "options": {"expires": every},
            }
        }
    return app


def sign_interval(settings: Settings) -> float | None:
    """Seconds between periodic digests, or None when nothing would sign them."""
    if settings.audit_key_file is None or not settings.audit_sign_interval_s:
        return None
    return settings.audit_sign_interval_s


def dispatcher(settings: Settings) -> CeleryDispatcher:
    """The dispatcher the CLI and the API use (`orchestrator.service.dispatch`
    names this function): the app of this process, configured from the same
    settings, so jobs go where the workers listen."""
    return CeleryDispatcher(
        app, sign=settings.audit_key_file is not None, broadcast=not settings.embedded_broker
    )


# The worker's settings, read once: tasks take them from here (tasks.deps).
settings = get_settings()
app = make_app(settings)
import tasks.worker_probe  # noqa: E402,F401  (heartbeat and probes, on worker_ready)
