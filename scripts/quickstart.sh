#!/usr/bin/env bash
# The main job on a fresh machine: install dynamofs and mount a filesystem.
#   bash scripts/quickstart.sh [MOUNTPOINT]
# The source is $DYNAMOFS_SOURCE when set (e.g. aws:us-east-1/Shared, with AWS
# credentials configured); otherwise the embedded store, one local file, which
# needs no AWS at all.
set -euo pipefail
cd "$(dirname "$0")/.."
mountpoint=${1:-/mnt/dynamofs}
source=${DYNAMOFS_SOURCE:-local:${HOME:-/root}/.local/share/dynamofs/default.db}

bash scripts/install.sh
mkdir -p "$mountpoint"
case $source in local:*) mkdir -p "$(dirname "${source#local:}")" ;; esac
dynamofs mount "$source" "$mountpoint"
echo "hello from dynamofs" > "$mountpoint/hello.txt"
ls -la "$mountpoint"
cat "$mountpoint/hello.txt"
findmnt "$mountpoint"
echo
echo "Mounted $source at $mountpoint. Unmount with: umount $mountpoint"
