#!/bin/sh
# Entrypoint of the orchestrator image: a role name becomes its command, and
# the shell tool's sandbox mode is settled before the service starts.
#
#   api [ARGS]      orchestrator api --host 0.0.0.0 --port 8000 [ARGS]
#   worker [ARGS]   orchestrator worker [ARGS]
#   flower [ARGS]   orchestrator flower --port 5555 [ARGS]
#   migrate         orchestrator db upgrade
#   anything else   runs as given (orchestrator doctor, sh, ...)
#
# ORCHESTRATOR_SANDBOX (an image variable, not a setting):
#   auto      (default) use bubblewrap when it can start a sandbox here, else
#             the fallback (rlimits, process group, uid drop)
#   bwrap     require bubblewrap: refuse to start when it cannot run
#   fallback  never use bubblewrap
# `orchestrator doctor` reports which mode is active.
set -eu

BWRAP_DIR=/usr/local/libexec/orchestrator/sandbox
mode="${ORCHESTRATOR_SANDBOX:-auto}"

bwrap_works() {
    # The same namespaces the sandbox asks for (orchestrator/sandbox.py).
    "$BWRAP_DIR/bwrap" --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp \
        --unshare-pid --unshare-ipc --unshare-net --die-with-parent \
        /bin/true 2>/tmp/.bwrap-check
}

case "$mode" in
    fallback) ;;
    auto)
        if bwrap_works; then
            PATH="$BWRAP_DIR:$PATH"
        else
            echo "orchestrator-entrypoint: bubblewrap cannot start a sandbox here" \
                 "($(head -n1 /tmp/.bwrap-check 2>/dev/null)); shell commands run in" \
                 "the fallback sandbox. See docs/deployment.md, Sandbox." >&2
        fi ;;
    bwrap)
        if ! bwrap_works; then
            echo "orchestrator-entrypoint: ORCHESTRATOR_SANDBOX=bwrap but bubblewrap" \
                 "cannot start a sandbox: $(cat /tmp/.bwrap-check 2>/dev/null)." \
                 "Allow user namespaces (docs/deployment.md, Sandbox) or set" \
                 "ORCHESTRATOR_SANDBOX=auto." >&2
            exit 2
        fi
        PATH="$BWRAP_DIR:$PATH" ;;
    *)
        echo "orchestrator-entrypoint: ORCHESTRATOR_SANDBOX must be auto, bwrap or" \
             "fallback, not '$mode'" >&2
        exit 2 ;;
esac
export PATH

# Connection URLs carry passwords, so they come as secret files too: a file
# named after the setting (store_url, broker_url, result_backend) in the
# secrets folder sets ORCH_<NAME> unless the environment already does.
secrets_dir="${ORCH_SECRETS_DIR:-/run/secrets}"
for name in store_url broker_url result_backend; do
    var="ORCH_$(printf '%s' "$name" | tr '[:lower:]' '[:upper:]')"
    if [ -r "$secrets_dir/$name" ] && [ -z "$(printenv "$var" || true)" ]; then
        value="$(cat "$secrets_dir/$name")"
        export "$var=$value"
    fi
done

role="${1:-api}"
[ "$#" -gt 0 ] && shift
# The image's HEALTHCHECK reads the role to know which endpoint to ask.
printf '%s\n' "$role" > /tmp/.orchestrator-role 2>/dev/null || true

case "$role" in
    api)     exec orchestrator api --host 0.0.0.0 --port "${API_PORT:-8000}" "$@" ;;
    worker)  exec orchestrator worker "$@" ;;
    flower)  exec orchestrator flower --port "${FLOWER_PORT:-5555}" "$@" ;;
    migrate) exec orchestrator db upgrade "$@" ;;
    orchestrator)
        # `orchestrator worker ...` given in full (compose, Helm): same roles.
        case "${1:-}" in
            api|worker|flower) printf '%s\n' "$1" > /tmp/.orchestrator-role 2>/dev/null || true ;;
            db) printf 'migrate\n' > /tmp/.orchestrator-role 2>/dev/null || true ;;
        esac
        exec orchestrator "$@" ;;
    *)       exec "$role" "$@" ;;
esac
