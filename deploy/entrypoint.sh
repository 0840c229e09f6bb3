#!/bin/sh
# The container's entry point: wait for the database, apply the migrations, then serve.
#
#   PDPLANNER_DATABASE_URL   the database (required in the container: PostgreSQL in compose)
#   PDPLANNER_PORT           port to serve on (default 50051)
#   PDPLANNER_DB_WAIT_S      how long to keep retrying an unreachable database (default 60)
#
# `pdplanner db upgrade` is retried once a second until it succeeds, so the server also starts
# where nothing orders it after the database (a plain `docker run`, a Kubernetes pod). The
# migrations are idempotent: replicas started after the first find the schema at its head. The
# server then runs with PDPLANNER_MIGRATE=false (already done) and reports SERVING on the gRPC
# health service once its kernels are loaded. Extra arguments go to `pdplanner serve`.
set -eu

port="${PDPLANNER_PORT:-50051}"
wait_s="${PDPLANNER_DB_WAIT_S:-60}"

waited=0
until pdplanner db upgrade; do
  if [ "$waited" -ge "$wait_s" ]; then
    echo "error: the database did not accept the migrations within ${wait_s}s" >&2
    exit 1
  fi
  waited=$((waited + 1))
  sleep 1
done
PDPLANNER_MIGRATE=false exec pdplanner serve --port "$port" "$@"
