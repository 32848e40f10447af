#!/usr/bin/env bash
# One real job through a real Kafka: start a local broker and the service, submit the sample
# job, follow it to its end, show where the artifact is, then stop everything started here.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=.demo
PORT=${DEMO_KAFKA_PORT:-19092}
mkdir -p "$DEMO"
export MODEL_TRAINER_BOOTSTRAP_SERVERS=127.0.0.1:$PORT
export MODEL_TRAINER_DATA_ROOT=deploy/demo
export MODEL_TRAINER_ARTIFACTS_ROOT=$DEMO/artifacts
export MODEL_TRAINER_HTTP_PORT=${DEMO_HTTP_PORT:-18080}
export MODEL_TRAINER_WORKERS=1
export MODEL_TRAINER_LOG_FORMAT=json
service_pid=""

cleanup() {
  if [[ -n "$service_pid" ]] && kill -0 "$service_pid" 2>/dev/null; then
    kill -TERM "$service_pid"
    wait "$service_pid" || true
  fi
  python3 deploy/local_kafka.py stop --dir "$DEMO/kafka" >/dev/null
}
trap cleanup EXIT

started=$(date +%s)
python3 deploy/local_kafka.py start --fresh --dir "$DEMO/kafka" --port "$PORT"
.venv/bin/model-trainer serve 2>"$DEMO/service.log" &
service_pid=$!
for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$MODEL_TRAINER_HTTP_PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "$service_pid" 2>/dev/null || { echo "service exited; see $DEMO/service.log" >&2; exit 1; }
  sleep 0.5
done
echo "service ready (log: $DEMO/service.log, metrics: http://127.0.0.1:$MODEL_TRAINER_HTTP_PORT/metrics)"
job_id="demo-$(date +%Y%m%d-%H%M%S)"
.venv/bin/model-trainer submit deploy/demo/job.json --job-id "$job_id" --follow --timeout 900
artifact="$MODEL_TRAINER_ARTIFACTS_ROOT/$job_id"
test -f "$artifact/manifest.json"
echo "artifact: $(cd "$artifact" && pwd)"
ls -l "$artifact"
echo "try:  .venv/bin/model-trainer sample $artifact --prompt 'ROMEO:'"
echo "demo finished in $(( $(date +%s) - started ))s"
