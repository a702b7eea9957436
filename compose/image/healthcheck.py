#!/usr/bin/env python3
"""The image's HEALTHCHECK: ask the running role's own liveness endpoint.

    orchestrator-healthcheck                 # by the role the entrypoint wrote
    orchestrator-healthcheck URL             # any URL: exit 0 on 2xx

Roles: api -> http://127.0.0.1:$API_PORT/healthz (8000); worker ->
http://127.0.0.1:$ORCH_WORKER_PROBE_PORT/healthz (a worker without a probe
port passes: its heartbeat file is its only signal); flower ->
http://127.0.0.1:$FLOWER_PORT/healthcheck (5555); migrate and others pass.
Standard library only: the slim image has no curl.
"""

import os
import sys
import urllib.error
import urllib.request


def url_for_role(role: str) -> str | None:
    if role == "api":
        return f"http://127.0.0.1:{os.environ.get('API_PORT', '8000')}/healthz"
    if role == "worker":
        port = os.environ.get("ORCH_WORKER_PROBE_PORT")
        return f"http://127.0.0.1:{port}/healthz" if port else None
    if role == "flower":
        prefix = os.environ.get("ORCH_FLOWER_URL_PREFIX", "").strip("/")
        path = f"/{prefix}/healthcheck" if prefix else "/healthcheck"
        return f"http://127.0.0.1:{os.environ.get('FLOWER_PORT', '5555')}{path}"
    return None


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        url: str | None = argv[1]
    else:
        try:
            with open("/tmp/.orchestrator-role", encoding="utf-8") as f:
                role = f.read().strip()
        except OSError:
            role = "api"
        url = url_for_role(role)
    if url is None:
        return 0
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:  # noqa: S310 (local URL)
            return 0 if 200 <= resp.status < 300 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
