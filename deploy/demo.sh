#!/usr/bin/env bash
# Two real jobs through a real Kafka: start a local broker and the service, submit the sample
# job (a GPT-2 from scratch), follow it to its end, show where the artifact is; then fine-tune
# a small local chat model with a LoRA adapter on the demo's chat records and sample from it;
# then stop everything started here.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=.demo
PORT=${DEMO_KAFKA_PORT:-19092}
mkdir -p "$DEMO"
export MODEL_TRAINER_BOOTSTRAP_SERVERS=127.0.0.1:$PORT
# The data root is a copy of deploy/demo: the chat job's model folder is built into it.
export MODEL_TRAINER_DATA_ROOT=$DEMO/data
mkdir -p "$MODEL_TRAINER_DATA_ROOT"
cp deploy/demo/shakespeare-sample.txt deploy/demo/chat.jsonl "$MODEL_TRAINER_DATA_ROOT/"
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

# The second job: no model hub is reachable from a fresh machine, so the demo builds its base
# folder (a small Llama briefly trained on the Shakespeare sample, with a chat template).
.venv/bin/python deploy/demo_chat_model.py "$MODEL_TRAINER_DATA_ROOT/models/chat-base"
chat_id="demo-chat-$(date +%Y%m%d-%H%M%S)"
.venv/bin/model-trainer submit deploy/demo/chat-job.json --job-id "$chat_id" --follow --timeout 900
chat="$MODEL_TRAINER_ARTIFACTS_ROOT/$chat_id"
test -f "$chat/adapter_model.safetensors"
echo "adapter: $(cd "$chat" && pwd)"
ls -l "$chat"
prompt=$'<|im_start|>user\nWho is Romeo?<|endoftext|>\n<|im_start|>assistant\n'
.venv/bin/model-trainer sample "$chat" --prompt "$prompt" --max-new-tokens 24 --temperature 0.01
echo "demo finished in $(( $(date +%s) - started ))s"
