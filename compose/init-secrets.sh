#!/bin/sh
# Writes the compose stack's secret files under ./secrets (once: an existing
# file is kept), and the workspaces folder. Run from compose/:
#
#   ./init-secrets.sh            # random passwords and tokens
#   printf %s "$KEY" > secrets/model_api_key   # then your model API key
#
# Files are mode 0644 so the containers' users (10001, 65534) can read the
# bind mount; keep the folder itself private (0700) on a shared host.
set -eu
cd "$(dirname "$0")"
umask 022
mkdir -p secrets workspaces
chmod 0700 secrets

rand() { python3 -c 'import secrets; print(secrets.token_urlsafe(32), end="")'; }

put() {  # put NAME VALUE: write secrets/NAME unless it exists
    if [ ! -s "secrets/$1" ]; then
        printf '%s' "$2" > "secrets/$1"
        echo "wrote secrets/$1"
    fi
}

put postgres_password "$(rand)"
put store_url "postgresql://orchestrator:$(cat secrets/postgres_password)@postgres:5432/orchestrator"
put api_token_admin "$(rand)"
put api_token_prometheus "$(rand)"
put flower_basic_auth "admin:$(rand)"
put model_api_key ""
[ -s secrets/model_api_key ] || echo "secrets/model_api_key is empty: write your model API key there"
