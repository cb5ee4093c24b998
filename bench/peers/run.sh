#!/usr/bin/env bash
# Steward and its peer (BullMQ chains) measured in the same run, each against a fresh private
# redis-server with AOF appendfsync everysec, with the same arguments:
#   bench/peers/run.sh --workflows 10000 --steps 5 --concurrency 64   # burst
#   bench/peers/run.sh --workflows 300 --steps 5 --serial            # one at a time
#   bench/peers/run.sh --rate 200 --duration 10 --steps 5            # open loop
# Needs: a release build (cargo build --release), node and npm (installs bench/peers/bullmq's
# locked packages on first use). Prints each one's JSON line, then a comparison.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
steward="$root/target/release/steward"
[ -x "$steward" ] || { echo "run.sh: build first: cargo build --release" >&2; exit 1; }
if [ ! -d "$here/bullmq/node_modules" ]; then
  (cd "$here/bullmq" && npm ci --no-audit --no-fund --ignore-scripts >/dev/null)
fi

with_redis() { # with_redis COMMAND… : runs COMMAND with $REDIS_URL set to a fresh private server
  local dir port pid
  dir="$(mktemp -d)"
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" --appendonly yes \
    --appendfsync everysec --logfile "$dir/redis.log" --daemonize no >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
  REDIS_URL="redis://127.0.0.1:$port/" "$@" || { kill "$pid"; rm -rf "$dir"; return 1; }
  kill "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$dir"
}

steward_json="$(with_redis sh -c "\"$steward\" --redis \"\$REDIS_URL\" bench --json $* 2>/dev/null")"
bullmq_json="$(with_redis sh -c "node \"$here/bullmq/chains.js\" --redis \"\$REDIS_URL\" $*")"
echo "steward: $steward_json"
echo "bullmq:  $bullmq_json"
python3 - "$steward_json" "$bullmq_json" <<'PY'
import json, sys
s, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
rows = [("workflows/s", "workflows_per_s", "{:,.0f}"), ("p50 ms", "p50_ms", "{:.2f}"),
        ("p90 ms", "p90_ms", "{:.2f}"), ("p99 ms", "p99_ms", "{:.2f}"), ("max ms", "max_ms", "{:.2f}"),
        ("Redis CPU µs/step", "redis_cpu_us_per_step", "{:.1f}"),
        ("Redis bytes in/step", "redis_bytes_in_per_step", "{:.0f}"),
        ("Redis bytes out/step", "redis_bytes_out_per_step", "{:.0f}"),
        ("Redis commands/step", "redis_commands_per_step", "{:.1f}"),
        ("Redis socket reads/step", "redis_reads_per_step", "{:.2f}"),
        ("Redis socket writes/step", "redis_writes_per_step", "{:.2f}"),
        ("client CPU µs/step", "process_cpu_us_per_step", "{:.1f}")]
print(f"{s['workflows']} workflows × {s['steps']} steps, {s['mode']}")
print(f"{'':24} {'steward':>12} {b['peer']:>22}")
for label, key, fmt in rows:
    print(f"{label:24} {fmt.format(s.get(key) or 0):>12} {fmt.format(b.get(key) or 0):>22}")
print(f"steward / bullmq workflows/s: {s['workflows_per_s'] / b['workflows_per_s']:.2f}×")
PY
