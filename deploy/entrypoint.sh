#!/bin/sh
# The image's entrypoint: `model-trainer "$@"`, with a unique, stable instance id by default.
#
# MODEL_TRAINER_INSTANCE_ID gives static group membership and the producer's transactional id,
# so it must differ between instances and survive restarts. When it is unset (as in
# docker-compose.yml) it becomes the container's host name: compose gives every replica of
# `--scale` its own (the container id, kept across restarts of that container), so replicas
# never fence each other. Kubernetes sets it from the pod name (deploy/k8s/statefulset.yaml).
set -eu
if [ -z "${MODEL_TRAINER_INSTANCE_ID:-}" ]; then
  MODEL_TRAINER_INSTANCE_ID="${HOSTNAME:-$(cat /proc/sys/kernel/hostname)}"
fi
export MODEL_TRAINER_INSTANCE_ID
exec model-trainer "$@"
