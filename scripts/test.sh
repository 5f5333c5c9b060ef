#!/usr/bin/env bash
# Run every test: install what is missing (fuse3, Java, DynamoDB Local), check
# formatting and lints, then run all test layers (unit, store conformance, mounted).
# Needs root (the mounted tests call mount(2)). `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
threads="${DYNAMOFS_TEST_THREADS:-4}"
cargo test --locked --no-fail-fast --lib --bins --tests -- --test-threads="$threads"
# The multi-client layers again, with the mounts sharing one local: file (SQLite)
# instead of a DynamoDB Local table.
local_dir="$(mktemp -d /tmp/dynamofs-local-tests.XXXXXX)"
trap 'rm -rf "$local_dir"' EXIT
DYNAMOFS_TEST_STORE=local DYNAMOFS_TEST_LOCAL_DIR="$local_dir" \
  cargo test --locked --no-fail-fast \
  --test mount_posix --test mount_tools --test locks --test storm --test gc --test crash \
  -- --test-threads="$threads"
