#!/usr/bin/env bash
# Runs the docker-compose.yml topology on this machine without Docker:
#
#   kinesis-mock (the Kinesis engine LocalStack runs) and dynalite from emulators/node_modules,
#   each on a free port  ->  localstack-init/create-stream.sh against them  ->  consumer + producer.
#
# Every variable the init script and the services get comes from their `environment:` block in
# docker-compose.yml (read by scripts/compose_env.py), with AWS_ENDPOINT_URL pointed at the host
# emulators instead of the `localstack` container. A variable already set in this script's
# environment overrides the compose value, e.g.
#
#   PRODUCER_COUNT=10 LOG_FORMAT=json scripts/run-local.sh
#
# With PRODUCER_COUNT set (here or in the compose file) the script exits when the producer does,
# after the consumer has logged that many `record received` lines (0 on success, 1 otherwise).
# Without it, everything runs until Ctrl-C. Every child process is stopped on exit.
#
# Settings (environment):
#   PRODUCER_BIN / CONSUMER_BIN   binaries to run; when neither is set the script builds them
#                                 first (`cargo build --bins --locked`) and runs
#                                 $CARGO_TARGET_DIR/debug/{producer,consumer} (default
#                                 target/debug)
#   RUN_DIR                       folder for the logs (default: a new mktemp folder)
#   START_TIMEOUT_SECONDS         wait for the emulators to answer (default 30)
#   CONSUME_TIMEOUT_SECONDS       wait for the consumer after the producer exited (default 60)
#   FOLLOW_LOGS                   1: show producer and consumer logs here (default 1 on a terminal)
#   KINESIS_MOCK_PACKAGE          kinesis-mock from emulators/node_modules (default
#                                 kinesis-local-0.5.2, the version LocalStack 4.14.0 runs;
#                                 kinesis-local is 0.6.2)
#
# Logs in RUN_DIR: kinesis-mock.log, dynalite.log, localstack-init.log, producer.log,
# consumer.log, plus the environment each got (*.env) and the emulator endpoints (endpoints.env).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

say() { printf 'run-local: %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

# The emulators started below are the only endpoints: ignore any from the caller's environment.
for name in "${!AWS_ENDPOINT_URL@}"; do unset "$name"; done

if [[ -z "${PRODUCER_BIN:-}" && -z "${CONSUMER_BIN:-}" ]]; then
  command -v cargo >/dev/null 2>&1 || die "cargo is not installed (https://rustup.rs), or set PRODUCER_BIN and CONSUMER_BIN"
  say "building the services (cargo build --bins --locked)"
  cargo build --bins --locked >&2
fi
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
[[ "$target_dir" = /* ]] || target_dir="$repo/$target_dir"
producer_bin="${PRODUCER_BIN:-$target_dir/debug/producer}"
consumer_bin="${CONSUMER_BIN:-$target_dir/debug/consumer}"
start_timeout="${START_TIMEOUT_SECONDS:-30}"
consume_timeout="${CONSUME_TIMEOUT_SECONDS:-60}"
follow_logs="${FOLLOW_LOGS:-}"
kinesis_mock="$repo/emulators/node_modules/${KINESIS_MOCK_PACKAGE:-kinesis-local-0.5.2}"
if [[ -z "$follow_logs" ]]; then
  if [[ -t 1 ]]; then follow_logs=1; else follow_logs=0; fi
fi

for bin in "$producer_bin" "$consumer_bin"; do
  [[ -x "$bin" ]] || die "$bin is not an executable file (set PRODUCER_BIN and CONSUMER_BIN to built binaries, or neither to build them)"
done
command -v node >/dev/null 2>&1 || die "node is not installed (needed for the emulators in emulators/)"
command -v curl >/dev/null 2>&1 || die "curl is not installed (needed for the health checks)"

if [[ -n "${RUN_DIR:-}" ]]; then
  run_dir="$RUN_DIR"
  mkdir -p "$run_dir"
else
  run_dir="$(mktemp -d "${TMPDIR:-/tmp}/run-local.XXXXXX")"
fi
run_dir="$(cd "$run_dir" && pwd)"

# ---- child processes: every one is stopped on exit ----
children=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid alive deadline i
  # Stop the services before the emulators they talk to.
  for ((i = ${#children[@]} - 1; i >= 0; i--)); do
    kill -TERM "${children[i]}" 2>/dev/null || true
  done
  deadline=$((SECONDS + 10))
  while ((SECONDS < deadline)); do
    alive=0
    for pid in "${children[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    ((alive)) || break
    sleep 0.2
  done
  for pid in "${children[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if ((${#children[@]})); then say "stopped; logs in $run_dir"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- tools ----
if [[ ! -f "$kinesis_mock/main.js" || ! -x emulators/node_modules/.bin/dynalite ]]; then
  say "installing the emulators (npm ci --prefix emulators)"
  npm ci --prefix emulators --no-audit --no-fund >&2
fi
[[ -f "$kinesis_mock/main.js" ]] || die "no kinesis-mock in $kinesis_mock (check KINESIS_MOCK_PACKAGE)"
venv_bin="$(scripts/dev-venv.sh)"
python="$venv_bin/python"

# Five distinct free ports, chosen by the kernel: the emulators and the services' HTTP servers.
read -r kinesis_port kinesis_tls_port dynamodb_port producer_http_port consumer_http_port < <("$python" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)
[[ -n "${consumer_http_port:-}" ]] || die "could not pick free ports"
kinesis_url="http://127.0.0.1:$kinesis_port"
dynamodb_url="http://127.0.0.1:$dynamodb_port"
printf 'AWS_ENDPOINT_URL_KINESIS=%s\nAWS_ENDPOINT_URL_DYNAMODB=%s\n' "$kinesis_url" "$dynamodb_url" >"$run_dir/endpoints.env"

# ---- emulators ----
kinesis_env=(
  KINESIS_MOCK_CERT_PATH="$kinesis_mock/server.json"
  KINESIS_MOCK_PLAIN_PORT="$kinesis_port"
  KINESIS_MOCK_TLS_PORT="$kinesis_tls_port"
  LOG_LEVEL="${KINESIS_MOCK_LOG_LEVEL:-WARN}"
)
# Stream operations complete at once unless the caller asks for a delay (kinesis-mock: 500ms).
for op in CREATE_STREAM DELETE_STREAM REGISTER_STREAM_CONSUMER DEREGISTER_STREAM_CONSUMER \
  START_STREAM_ENCRYPTION STOP_STREAM_ENCRYPTION MERGE_SHARDS SPLIT_SHARD UPDATE_SHARD_COUNT \
  UPDATE_STREAM_MODE; do
  var="${op}_DURATION"
  kinesis_env+=("$var=${!var:-0ms}")
done
env "${kinesis_env[@]}" node "$kinesis_mock/main.js" >"$run_dir/kinesis-mock.log" 2>&1 &
kinesis_pid=$!
children+=("$kinesis_pid")
emulators/node_modules/.bin/dynalite --port "$dynamodb_port" >"$run_dir/dynalite.log" 2>&1 &
dynamodb_pid=$!
children+=("$dynamodb_pid")

# wait_up NAME PID LOG URL [CURL_FLAGS...]: until URL answers, the process dies or the deadline.
wait_up() {
  local name=$1 pid=$2 log=$3 url=$4
  shift 4
  local deadline=$((SECONDS + start_timeout))
  until curl -sS -o /dev/null --max-time 2 "$@" "$url" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$log" >&2 || true
      die "$name exited during start-up; see $log"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 20 "$log" >&2 || true
      die "$name did not answer on $url within ${start_timeout}s; see $log"
    fi
    sleep 0.2
  done
}
wait_up kinesis-mock "$kinesis_pid" "$run_dir/kinesis-mock.log" "$kinesis_url/healthcheck" --fail
wait_up dynalite "$dynamodb_pid" "$run_dir/dynalite.log" "$dynamodb_url/"
say "kinesis-mock on $kinesis_url, dynalite on $dynamodb_url"

# ---- environments from docker-compose.yml ----
# compose_env SERVICE ARRAY: fills ARRAY with NAME=VALUE entries and writes RUN_DIR/SERVICE.env.
compose_env() {
  local service=$1 file="$run_dir/$1.env0"
  "$python" scripts/compose_env.py "$service" --endpoint "$kinesis_url" \
    --set "AWS_ENDPOINT_URL_DYNAMODB=$dynamodb_url" >"$file" ||
    die "could not read the environment of $service from docker-compose.yml"
  mapfile -d '' -t "$2" <"$file"
  tr '\0' '\n' <"$file" >"$run_dir/$service.env"
  rm -f "$file"
}
init_env=() producer_env=() consumer_env=()
compose_env localstack-init init_env
compose_env producer producer_env
compose_env consumer consumer_env
# Both services on one host: each gets its own HTTP port instead of compose's 8080 (the later
# entry wins with `env`).
producer_env+=("HTTP_ADDR=127.0.0.1:$producer_http_port")
consumer_env+=("HTTP_ADDR=127.0.0.1:$consumer_http_port")
printf 'HTTP_ADDR=127.0.0.1:%s\n' "$producer_http_port" >>"$run_dir/producer.env"
printf 'HTTP_ADDR=127.0.0.1:%s\n' "$consumer_http_port" >>"$run_dir/consumer.env"

# ---- the stream ----
if ! env "${init_env[@]}" PATH="$venv_bin:$PATH" bash localstack-init/create-stream.sh 2>&1 |
  tee "$run_dir/localstack-init.log" >&2; then
  die "localstack-init failed; see $run_dir/localstack-init.log"
fi

# ---- the services ----
env "${consumer_env[@]}" "$consumer_bin" >"$run_dir/consumer.log" 2>&1 &
consumer_pid=$!
children+=("$consumer_pid")
env "${producer_env[@]}" "$producer_bin" >"$run_dir/producer.log" 2>&1 &
producer_pid=$!
children+=("$producer_pid")

count=""
for kv in "${producer_env[@]}"; do
  if [[ "$kv" == PRODUCER_COUNT=* ]]; then count="${kv#PRODUCER_COUNT=}"; fi
done
count="${count//[[:space:]]/}"
if [[ -n "$count" ]]; then
  say "producer (pid $producer_pid) sends $count records, consumer pid $consumer_pid; logs in $run_dir"
else
  say "producer (pid $producer_pid) and consumer (pid $consumer_pid) running until Ctrl-C; logs in $run_dir"
fi
say "status pages: producer http://127.0.0.1:$producer_http_port/, consumer http://127.0.0.1:$consumer_http_port/ (also /metrics, /healthz, /readyz)"
if [[ "$follow_logs" == 1 ]]; then
  tail -n +1 -F "$run_dir/producer.log" "$run_dir/consumer.log" &
  children+=("$!")
fi

received() {
  local n
  n="$(grep -c 'record received' "$run_dir/consumer.log" 2>/dev/null)" || true
  printf '%s' "${n:-0}"
}

# reap PID: sets `status` to the exit status of a child that has ended (in this shell: `wait`
# cannot collect another shell's children, so never call it inside $(...)).
status=0
reap() {
  status=0
  wait "$1" || status=$?
}

# Until the producer exits (with PRODUCER_COUNT) or forever; the consumer must not stop first.
while kill -0 "$producer_pid" 2>/dev/null; do
  if ! kill -0 "$consumer_pid" 2>/dev/null; then
    reap "$consumer_pid"
    die "consumer exited early with status $status; see $run_dir/consumer.log"
  fi
  sleep 0.5
done
reap "$producer_pid"
((status == 0)) || die "producer exited with status $status; see $run_dir/producer.log"
sent="$(grep -c 'record sent' "$run_dir/producer.log" || true)"
say "producer finished: $sent records sent"

if [[ "$count" =~ ^[0-9]+$ ]]; then
  deadline=$((SECONDS + consume_timeout))
  while (($(received) < count)); do
    if ! kill -0 "$consumer_pid" 2>/dev/null; then
      reap "$consumer_pid"
      die "consumer exited with status $status after $(received) of $count records; see $run_dir/consumer.log"
    fi
    if ((SECONDS >= deadline)); then
      die "consumer logged $(received) of $count \`record received\` lines within ${consume_timeout}s; see $run_dir/consumer.log"
    fi
    sleep 0.2
  done
fi

# Stop the consumer the way docker compose does, and expect a clean exit.
kill -TERM "$consumer_pid" 2>/dev/null || true
deadline=$((SECONDS + 10))
while kill -0 "$consumer_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
kill -0 "$consumer_pid" 2>/dev/null && die "consumer did not stop within 10s of SIGTERM"
reap "$consumer_pid"
((status == 0)) || die "consumer exited with status $status on SIGTERM; see $run_dir/consumer.log"
say "consumer received $(received) records; logs in $run_dir"
