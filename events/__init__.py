"""The event-sourced core: envelopes, canonical encoding and hash chain, the
append-only store, pure projections, replay, snapshots and verification.

Imports neither Celery nor any tool (DESIGN.md, dependency direction).
"""
