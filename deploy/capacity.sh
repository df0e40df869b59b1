#!/usr/bin/env bash
# CPU per turn of each service, measured as the chart runs them: seven processes (the
# release binaries) on PostgreSQL and Redis, loaded by `kefu bench` in a closed loop over
# gRPC, then through the signed-webhook channel, then by mail through the SMTP listener
# (the channel service's CPU per turn on each channel).
# Prints CPU seconds per 1000 turns and turns/s per core for each service, and how many
# one-core replicas 10,000 messages per second need at the HPA's 60% CPU target.
#
#   deploy/capacity.sh [SECONDS]     (make capacity)
#
# Needs PostgreSQL at $CAPACITY_POSTGRES (default postgres://postgres@127.0.0.1:5432) and
# Redis at $CAPACITY_REDIS (default redis://127.0.0.1:6379), and .venv (`make tools`) for
# the mail relay; uses a database and a Redis key prefix of its own, dropped afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-20}
bin=target/release
postgres=${CAPACITY_POSTGRES:-postgres://postgres@127.0.0.1:5432}
redis=${CAPACITY_REDIS:-redis://127.0.0.1:6379}
database="kefu_capacity_$$"
work=$(mktemp -d)
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q "$postgres/postgres" -c "DROP DATABASE IF EXISTS $database" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

psql -q "$postgres/postgres" -c "CREATE DATABASE $database" >/dev/null
# The tenant's mail relay, which takes the replies to mail.
.venv/bin/python tests/mail_peer.py relay --port-file "$work/relay-port" --log "$work/relay.jsonl" &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$work/relay-port" ] && break; sleep 0.1; done
# The demo tenant with a signed-webhook channel whose replies go to the bench, and a
# support mailbox whose replies go to the relay.
cp -r tenants "$work/tenants"
cat >>"$work/tenants/demo/tenant.toml" <<TOML

[channels.webhook]
secret = { env = "CAPACITY_WEBHOOK_SECRET" }
deliver_url = "http://127.0.0.1:8091/replies"

[channels.email]
address = "support@demo.example"
relay = { host = "127.0.0.1", port = $(cat "$work/relay-port"), tls = "none" }
TOML
export CAPACITY_WEBHOOK_SECRET="capacity-$$"
export DATABASE_URL="$postgres/$database" REDIS_URL="$redis" KEFU_REDIS_PREFIX="kefu-capacity-$$:"
export KEFU_MODELS_DIR="${KEFU_MODELS_DIR:-$PWD/models}" KEFU_TENANTS_DIR="$work/tenants"
export KEFU_DATA_DIR="$work" KEFU_WEB_PORT=0 RUST_LOG=warn
export KEFU_ROUTER_URL=http://127.0.0.1:50053 KEFU_KNOWLEDGE_URL=http://127.0.0.1:50054 \
  KEFU_TICKET_URL=http://127.0.0.1:50055 KEFU_SENTIMENT_URL=http://127.0.0.1:50056 \
  KEFU_ORCHESTRATOR_URL=http://127.0.0.1:50052 KEFU_CHANNELS_URL=http://127.0.0.1:50057 \
  KEFU_GATEWAY_URL=http://127.0.0.1:50051 KEFU_CHANNELS_HTTP_PORT=8090 KEFU_CHANNELS_SMTP_PORT=2525

"$bin/kefu" migrate >/dev/null
services=(gateway orchestrator router knowledge ticket sentiment channels)
declare -A pid_of
for i in "${!services[@]}"; do
  name=${services[$i]}
  KEFU_GRPC_PORT=$((50051 + i)) KEFU_METRICS_PORT=$((9101 + i)) \
    "$bin/kefu-$name" >"$work/$name.log" 2>&1 &
  pid_of[$name]=$!
  pids+=($!)
done

# utime + stime of a process, in clock ticks
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Turns `kefu bench` answers (BENCH-ARGS...) in a closed loop of 64 customers.
bench_turns() {
  "$bin/kefu" bench "$@" --customers 64 --duration "$seconds" --json "$work/bench.json" >/dev/null
  python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['answered'])" "$work/bench.json"
}

# Mails answered: 16 senders, one SMTP connection each, for the measuring time; then the
# wait until every reply has reached the relay.
mail_turns() {
  python3 - 127.0.0.1 2525 "$seconds" "$work/relay.jsonl" <<'EOF'
import smtplib, sys, threading, time
host, port, seconds, log = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
sent, lock, until = [0], threading.Lock(), time.time() + seconds
def sender(n):
    with smtplib.SMTP(host, port, timeout=30) as client:
        i = 0
        while time.time() < until:
            i += 1
            mail = (f"From: c{n}@load.example\r\nTo: support@demo.example\r\nSubject: Plans\r\n"
                    f"Message-ID: <load-{n}-{i}@load.example>\r\n\r\nHow much does the Pro plan cost?\r\n")
            client.sendmail(f"c{n}@load.example", ["support@demo.example"], mail)
            with lock:
                sent[0] += 1
threads = [threading.Thread(target=sender, args=(n,)) for n in range(16)]
for t in threads: t.start()
for t in threads: t.join()
deadline, replies = time.time() + 120, 0
while time.time() < deadline:
    try:
        with open(log) as f:
            replies = sum(1 for line in f if '"<load-' in line)
    except FileNotFoundError:
        pass
    if replies >= sent[0]:
        break
    time.sleep(0.5)
print(f"{replies} of {sent[0]} mails answered", file=sys.stderr)
print(replies)
EOF
}

# measure LABEL DRIVER...: CPU per answered turn of each service while DRIVER (which
# prints the turns answered) runs.
measure() {
  local label=$1
  shift
  declare -A before
  for name in "${services[@]}"; do before[$name]=$(cpu_ticks "${pid_of[$name]}"); done
  echo "== measuring for ${seconds} s: $label"
  local turns tick
  turns=$("$@")
  tick=$(getconf CLK_TCK)
  printf '\n%-13s %12s %16s %22s\n' service "cpu s/1000" "turns/s per core" "replicas for 10k/s"
  for name in "${services[@]}"; do
    used=$(($(cpu_ticks "${pid_of[$name]}") - before[$name]))
    python3 - "$name" "$used" "$tick" "$turns" <<'EOF'
import math, sys
name, ticks, tick, turns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
per_turn = ticks / tick / max(turns, 1)
rate = 1 / per_turn if per_turn else float("inf")
# one-core replicas at the HPA's 60% CPU target
replicas = math.ceil(10_000 * per_turn / 0.6)
print(f"{name:<13} {per_turn * 1000:12.2f} {rate:16.0f} {replicas:22d}")
EOF
  done
  echo "(${turns} turns answered; the bench client shared the cores)"
  echo
}

echo "== warming up (the bench waits until the gateway is SERVING)"
"$bin/kefu" bench --customers 64 --duration 5 >/dev/null
measure "closed loop, 64 customers over gRPC" bench_turns
measure "closed loop, 64 customers through the signed webhook (a turn ends when its reply is delivered)" \
  bench_turns --webhook http://127.0.0.1:8090/webhooks/demo \
  --webhook-secret-env CAPACITY_WEBHOOK_SECRET --webhook-receive 127.0.0.1:8091
measure "16 mail senders through the SMTP listener (a turn ends when its reply reaches the relay)" \
  mail_turns
