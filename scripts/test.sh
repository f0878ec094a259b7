#!/usr/bin/env bash
# The project's test command (README, CI): format, lints, then unit and integration tests.
# Integration tests run the real logferry binary against real peers on 127.0.0.1
# (s3s-fs, moto, oauth2-mock-server, Azurite, gcp-storage-emulator, kmock) and checks the Helm
# chart offline (helm-python-sdk, kubernetes-validate, hadolint), all installed and started by
# tests/peers/peers.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --check
cargo clippy --all-targets -- -D warnings
bash tests/peers/peers.sh install
bash tests/peers/peers.sh start
trap 'bash tests/peers/peers.sh stop' EXIT
cargo test --no-fail-fast --lib --bins --tests
