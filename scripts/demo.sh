#!/usr/bin/env bash
# The end-to-end demo on the embedded defaults: local broker, three topics, ~50k generated
# events (with malformed, late and duplicate records), one pipeline run into DuckDB, a KPI
# summary. The broker is stopped at the end, whatever happens.
set -euo pipefail
export CX360_HOME="${CX360_HOME:-$PWD/.cx360}"
EVENTS="${DEMO_EVENTS:-50000}"
WAREHOUSE="data/cx360.duckdb"

# The broker's port: 19092 unless taken by another program, then any free one. Every cx360
# command reads CX360_BOOTSTRAP_SERVERS.
PORT="${DEMO_PORT:-19092}"
cx360 broker stop >/dev/null 2>&1 || true
if ! python -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])))" "$PORT" 2>/dev/null; then
  PORT=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
fi
export CX360_BOOTSTRAP_SERVERS="127.0.0.1:$PORT"

cleanup() { cx360 broker stop >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "== 1/5 local Kafka broker (Tansu, in memory)"
cx360 broker start --port "$PORT"
echo "== 2/5 topics"
cx360 topics create
echo "== 3/5 generating $EVENTS events (German/English social posts, web sessions, surveys)"
# The broker starts empty, so the demo starts with an empty warehouse too.
rm -f "$WAREHOUSE" "$WAREHOUSE.wal"
cx360 generate --events "$EVENTS" --truth-file data/truth.jsonl
echo "== 4/5 pipeline: cx360 run --once --sliding 1d/1h (rolling 24-hour KPIs every hour too)"
cx360 run --once --sliding 1d/1h --warehouse "duckdb:$WAREHOUSE"
echo "== 5/5 KPI summary from the warehouse"
cx360 summary --warehouse "duckdb:$WAREHOUSE"
echo
echo "Warehouse: $PWD/$WAREHOUSE; BI tools read its snapshot $PWD/${WAREHOUSE%.duckdb}-bi.duckdb (docs/bi.md)."
