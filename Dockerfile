# syntax=docker/dockerfile:1
# One image for every role: api, worker, flower, migrate (docs/deployment.md).
#
#   docker run IMAGE api        # orchestrator api --host 0.0.0.0 --port 8000
#   docker run IMAGE worker     # orchestrator worker
#   docker run IMAGE flower     # orchestrator flower --port 5555
#   docker run IMAGE migrate    # orchestrator db upgrade
#   docker run IMAGE orchestrator doctor   # anything else runs as given
#
# Build stage: wheels need a compiler for nothing we use today, but building
# the project and its dependencies into a venv here keeps pip, its caches and
# the source tree out of the runtime image.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY events ./events
COPY orchestrator ./orchestrator
COPY tasks ./tasks
# VERSION: the package version; the context has no .git for setuptools-scm to
# read, so CI and release.yml pass the tag's version (docs/releasing.md).
ARG VERSION=0.0.0
ENV SETUPTOOLS_SCM_PRETEND_VERSION_FOR_AGENT_ORCHESTRATOR=${VERSION}
# EXTRAS: optional-dependency groups of pyproject.toml to include (comma-separated):
# by default what production runs, the browser tools (Playwright driving the
# system Chromium) and Vault secrets; `orchestrator doctor` checks both.
ARG EXTRAS="browser,vault"
ARG EXTRA_PACKAGES=""
RUN pip install --upgrade pip \
 && if [ -n "$EXTRAS" ]; then pip install ".[${EXTRAS}]" $EXTRA_PACKAGES; \
    else pip install . $EXTRA_PACKAGES; fi \
 && pip check

FROM ${PYTHON_IMAGE} AS runtime
# chromium: the system browser Playwright drives (never `playwright install`);
# bubblewrap: the shell tool's sandbox; ripgrep: code search; git: patches and
# repository checks; tini: PID 1 that forwards signals so Celery shuts down warm;
# util-linux brings setpriv and prlimit, which the sandbox uses.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      chromium bubblewrap ripgrep git tini ca-certificates util-linux fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/* \
 # The sandbox picks bubblewrap when `bwrap` is on PATH. Inside a container it
 # only works with user namespaces allowed (docs/deployment.md, "Sandbox"), so
 # the binary lives off PATH and the entrypoint puts it back after checking it
 # can start a sandbox; otherwise the sandbox runs in its fallback mode.
 && mkdir -p /usr/local/libexec/orchestrator/sandbox \
 && mv /usr/bin/bwrap /usr/local/libexec/orchestrator/sandbox/bwrap

# A dedicated unprivileged user; numeric so `runAsNonRoot` can verify it.
ARG UID=10001
RUN groupadd --system --gid ${UID} orchestrator \
 && useradd --system --uid ${UID} --gid ${UID} --home-dir /var/lib/orchestrator \
      --shell /usr/sbin/nologin orchestrator \
 && mkdir -p /var/lib/orchestrator /workspaces /run/secrets \
 && chown orchestrator:orchestrator /var/lib/orchestrator /workspaces

COPY --from=build /opt/venv /opt/venv
COPY compose/image/entrypoint.sh /usr/local/bin/orchestrator-entrypoint
COPY compose/image/healthcheck.py /usr/local/bin/orchestrator-healthcheck
RUN chmod 0755 /usr/local/bin/orchestrator-entrypoint /usr/local/bin/orchestrator-healthcheck

# Settings are ORCH_* (orchestrator/config/settings.py). The root filesystem may be
# read-only: everything written goes to the state folder (a volume) or /tmp.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 \
    XDG_CONFIG_HOME=/tmp/.config \
    XDG_CACHE_HOME=/tmp/.cache \
    ORCH_STATE_DIR=/var/lib/orchestrator \
    ORCH_METRICS_DIR=/tmp/metrics \
    ORCH_SECRETS_DIR=/run/secrets \
    ORCH_BROWSER_EXECUTABLE=/usr/bin/chromium \
    ORCH_LOG_FORMAT=json

USER ${UID}:${UID}
WORKDIR /var/lib/orchestrator
VOLUME ["/var/lib/orchestrator"]
EXPOSE 8000 5555 9100

# Asks the role's own endpoint: the API's /healthz, the worker's probe port
# /healthz (ORCH_WORKER_PROBE_PORT), Flower's /healthcheck; a migration passes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["orchestrator-healthcheck"]

ENTRYPOINT ["tini", "--", "orchestrator-entrypoint"]
CMD ["api"]
