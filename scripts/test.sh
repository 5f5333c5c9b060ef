#!/usr/bin/env bash
# Run every test: install what is missing (fuse3, Java, DynamoDB Local), check
# formatting and lints, then run all test layers (unit, store conformance, mounted).
# Needs root (the mounted tests call mount(2)). `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --no-fail-fast --lib --bins --tests -- --test-threads="${DYNAMOFS_TEST_THREADS:-4}"
