#!/bin/sh
# kvrd's entrypoint in the container image. Turns the KVR_* environment variables that are set
# into kvrd flags, then appends the container command's own arguments (the last of a repeated
# flag wins, so arguments beat environment). Precedence, highest first:
#   container command arguments > KVR_* variables > the JSON file KVR_CONFIG > kvrd's defaults
# Model: KVR_MODEL when set; else the folder mounted at /models/model when it holds a
# config.json; else the demo model baked into the image (/opt/kvr/models/kvr-demo).
# KVR_ENTRYPOINT_DRY_RUN=1 prints the command, one argument a line, instead of running it.
set -eu

KVRD=${KVRD:-/opt/kvr/bin/kvrd}
MOUNTED=${KVR_MOUNTED_MODEL:-/models/model}
DEMO=${KVR_DEMO_MODEL:-/opt/kvr/models/kvr-demo}

if [ -n "${KVR_MODEL:-}" ]; then
  model=$KVR_MODEL
elif [ -f "$MOUNTED/config.json" ]; then
  model=$MOUNTED
else
  echo "kvrd-entrypoint: no model at $MOUNTED (no config.json): serving the demo model $DEMO" >&2
  model=$DEMO
fi

nargs=$#
set -- "$@" --model="$model" \
  --listen="${KVR_LISTEN:-0.0.0.0:50051}" --metrics_listen="${KVR_METRICS_LISTEN:-0.0.0.0:9464}"
config=${KVR_CONFIG-/etc/kvr/kvrd.json}
if [ -n "$config" ]; then set -- "$@" --config="$config"; fi
for name in backend workers partition topology attn_impl transport tsp_below cpu_threads max_queue max_running \
            max_model_len decode_steps_per_prefill shutdown_timeout_s prefill_timeout_s; do
  var=KVR_$(echo "$name" | tr '[:lower:]' '[:upper:]')
  eval "value=\${$var:-}"
  if [ -n "$value" ]; then set -- "$@" "--$name=$value"; fi
done
# Move the command's own arguments behind the generated flags.
i=0
while [ "$i" -lt "$nargs" ]; do set -- "$@" "$1"; shift; i=$((i + 1)); done

if [ "${KVR_ENTRYPOINT_DRY_RUN:-0}" = "1" ]; then
  printf '%s\n' "$KVRD" "$@"
  exit 0
fi
exec "$KVRD" "$@"
