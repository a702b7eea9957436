"""Celery app and its thin tasks: load state, call orchestrator/, append events."""
