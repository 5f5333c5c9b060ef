#!/usr/bin/env bash
# Build dynamofs (release) and install it: /usr/local/bin/dynamofs, plus the mount
# helper /sbin/mount.fuse.dynamo (a symlink) that `mount -t fuse.dynamo` and
# /etc/fstab use. Installs fuse3 if missing. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v fusermount3 >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null
fi
cargo build --release --locked
# Wherever cargo puts it: CARGO_TARGET_DIR and build.target-dir move the target directory.
target=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
install -m 0755 "$target/release/dynamofs" /usr/local/bin/dynamofs
ln -sf /usr/local/bin/dynamofs /sbin/mount.fuse.dynamo
echo "installed /usr/local/bin/dynamofs and /sbin/mount.fuse.dynamo"
