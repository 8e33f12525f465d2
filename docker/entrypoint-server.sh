#!/usr/bin/env bash
# Install the TensorRT FP16 engine(s) for the visible GPU(s), then run Triton on the GPU
# repository. Plans are kept in the /engines volume keyed by TensorRT version, SHA-256 of
# the ONNX, build arguments and GPU (training/build_engine.py): a restart with the same
# inputs copies the cached plan; a Triton/TensorRT upgrade, a new ONNX (whatever its file
# time) or other ENGINE_* values build a new one. A plan placed in the repository by hand
# (no model.plan.build.json beside it) is used as it is and never overwritten.
set -euo pipefail
# Paths are the image's; the variables exist for tests/test_docker.py, which runs this
# script with stand-ins for nvidia-smi, trtexec and tritonserver.
REPOSITORY=${MODEL_REPOSITORY:-/models}
MODEL_DIR=$REPOSITORY/hepascreen_vnet
APP_DIR=${HEPASCREEN_DIR:-/opt/hepascreen}
ONNX=${ENGINE_ONNX:-$APP_DIR/model.onnx}
CACHE_DIR=${ENGINE_CACHE_DIR:-/engines}
mkdir -p "$CACHE_DIR" "$MODEL_DIR/1"
# ENGINE_MAX_BATCH defaults to the config's max_batch_size; a lower value also lowers the
# config's max_batch_size and preferred sizes (--fit-config), as Triton requires.
CONFIG_MAX=$(sed -n 's/^max_batch_size:[[:space:]]*\([0-9][0-9]*\).*/\1/p' "$MODEL_DIR/config.pbtxt")
MAX_BATCH=${ENGINE_MAX_BATCH:-${CONFIG_MAX:-8}}
OPT_ARGS=()
if [ -n "${ENGINE_OPT_BATCH:-}" ]; then OPT_ARGS=(--opt-batch "$ENGINE_OPT_BATCH"); fi
cd "$APP_DIR"
python3 -m training.build_engine --all-gpus \
    --onnx "$ONNX" \
    --out "$MODEL_DIR/1/model.plan" \
    --config "$MODEL_DIR/config.pbtxt" --fit-config \
    --cache-dir "$CACHE_DIR" \
    --max-batch "$MAX_BATCH" "${OPT_ARGS[@]}"
echo "engine ready: $(cd "$MODEL_DIR/1" && ls -- *.plan | tr '\n' ' ')"
if [ "${1:-}" = "--build-engine-only" ]; then
    exit 0  # docs/gpu-first-run.md, command 1: build (or find) the engine, serve nothing
fi
# --disable-auto-complete-config: Triton uses config.pbtxt exactly as written (the
# replacement of the deprecated strict-model-config flag since Triton 2.24).
exec tritonserver --model-repository="$REPOSITORY" --disable-auto-complete-config \
    --http-address="${TRITON_BIND:-0.0.0.0}" --grpc-address="${TRITON_BIND:-0.0.0.0}" \
    --metrics-address="${TRITON_BIND:-0.0.0.0}" "$@"
