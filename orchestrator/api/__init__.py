"""The HTTP API (FastAPI): `create_app(settings)`; docs/api.md."""

from orchestrator.api.app import create_app

__all__ = ["create_app"]
