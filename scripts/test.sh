#!/usr/bin/env bash
# The project's test command (README, CI): format, lints, unit and integration tests.
# Integration tests run the real logferry binary; nothing but the Rust toolchain is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test --lib --bins --tests
