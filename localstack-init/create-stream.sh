#!/usr/bin/env bash
# Creates the Kinesis stream the producer and consumer use and waits until it is ACTIVE.
#
# Runs in the `localstack-init` container of docker-compose.yml (amazon/aws-cli image) and on the
# host from scripts/run-local.sh (awscli from requirements-dev.txt) against any Kinesis endpoint.
#
# Environment:
#   STREAM_NAME            stream to create (default demo-stream)
#   STREAM_SHARDS          shard count when the stream has to be created (default 2)
#   INIT_TIMEOUT_SECONDS   give up after this many seconds (default 300: on a first start
#                          LocalStack downloads and installs its Kinesis engine before it answers)
#   AWS_ENDPOINT_URL_KINESIS / AWS_ENDPOINT_URL  endpoint override, passed as --endpoint-url
#   AWS_REGION / AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY  as for any AWS CLI
#   AWS_CLI                the aws command to run (default: aws from PATH)
#
# Safe to re-run: a stream that already exists is fine (its shard count is left as it is).
# Exits 0 once the stream is ACTIVE, 1 on a bad setting or when the deadline passes. The deadline
# holds: every AWS CLI call is made once (no CLI retries; this loop retries) with connect and read
# timeouts no longer than the time left, so the script ends at most a couple of seconds after it.
set -euo pipefail

stream="${STREAM_NAME:-demo-stream}"
shards="${STREAM_SHARDS:-2}"
timeout_s="${INIT_TIMEOUT_SECONDS:-300}"

log() { printf 'localstack-init: %s\n' "$*" >&2; }
# An AWS CLI error message on one line, without the blank line it starts with.
oneline() {
  local s="${1//$'\n'/ }"
  s="${s#"${s%%[![:space:]]*}"}"
  printf '%s' "$s"
}

if [[ ! "$stream" =~ ^[A-Za-z0-9_.-]{1,128}$ ]]; then
  log "invalid STREAM_NAME \"$stream\" (allowed: 1-128 characters of a-z, A-Z, 0-9, _ . -)"
  exit 1
fi
if [[ ! "$shards" =~ ^[1-9][0-9]*$ ]]; then
  log "invalid STREAM_SHARDS \"$shards\" (allowed: a whole number, 1 or more)"
  exit 1
fi
if [[ ! "$timeout_s" =~ ^[1-9][0-9]*$ ]]; then
  log "invalid INIT_TIMEOUT_SECONDS \"$timeout_s\" (allowed: a whole number of seconds, 1 or more)"
  exit 1
fi

# The AWS CLI v1 only reads AWS_REGION through AWS_DEFAULT_REGION; v2 reads both.
if [[ -n "${AWS_REGION:-}" && -z "${AWS_DEFAULT_REGION:-}" ]]; then
  export AWS_DEFAULT_REGION="$AWS_REGION"
fi
export AWS_PAGER=""
# The loop below retries; a CLI retrying by itself (3 to 5 attempts, each up to its read timeout)
# would let one call outlast the deadline.
export AWS_MAX_ATTEMPTS=1 AWS_RETRY_MODE=standard

# Older CLIs ignore AWS_ENDPOINT_URL (v1 reads it from 1.29, v2 from 2.13): pass it explicitly.
read -r -a aws <<<"${AWS_CLI:-aws}"
endpoint="${AWS_ENDPOINT_URL_KINESIS:-${AWS_ENDPOINT_URL:-}}"
if [[ -n "$endpoint" ]]; then
  aws+=(--endpoint-url "$endpoint")
fi

deadline=$((SECONDS + timeout_s))
# One call's timeouts: 5 s to connect, 10 s to read (a slow call is retried by the loop), never
# more than the time left (the CLI reads 0 as "no timeout", hence at least 1).
call() {
  local left=$((deadline - SECONDS)) connect read
  ((left >= 1)) || left=1
  connect=$((left < 5 ? left : 5))
  read=$((left < 10 ? left : 10))
  "${aws[@]}" --cli-connect-timeout "$connect" --cli-read-timeout "$read" "$@"
}

last=""
next_report=$((SECONDS + 15))
log "stream $stream (STREAM_SHARDS=$shards) at ${endpoint:-the default endpoint}, deadline ${timeout_s}s"
while :; do
  if out="$(call kinesis describe-stream-summary --stream-name "$stream" \
    --query 'StreamDescriptionSummary.[StreamStatus,OpenShardCount]' --output text 2>&1)"; then
    read -r status open_shards <<<"$out"
    if [[ "$status" == "ACTIVE" ]]; then
      if [[ "$open_shards" != "$shards" ]]; then
        log "note: stream $stream has $open_shards open shards (STREAM_SHARDS=$shards is only used when creating it)"
      fi
      log "stream $stream is ACTIVE with $open_shards open shards"
      exit 0
    fi
    last="status $status"
  elif [[ "$out" == *ResourceNotFoundException* ]]; then
    log "creating stream $stream with $shards shards"
    if out="$(call kinesis create-stream --stream-name "$stream" --shard-count "$shards" 2>&1)"; then
      last="created, waiting for ACTIVE"
    elif [[ "$out" == *ResourceInUseException* ]]; then
      last="created by someone else, waiting for ACTIVE"
    else
      last="create-stream failed: $(oneline "$out")"
      # A malformed request will not succeed on a retry; anything else might (e.g. a limit).
      if [[ "$out" == *InvalidArgumentException* ]]; then
        log "$last"
        exit 1
      fi
    fi
  else
    # Connection refused, LocalStack still starting its Kinesis engine, ...: retry.
    last="$(oneline "$out")"
  fi
  if ((SECONDS >= deadline)); then
    log "stream $stream is not ACTIVE after ${timeout_s}s (INIT_TIMEOUT_SECONDS); last: $last"
    exit 1
  fi
  if ((SECONDS >= next_report)); then
    log "still waiting for stream $stream ($((deadline - SECONDS))s left); last: $last"
    next_report=$((SECONDS + 15))
  fi
  sleep 1
done
