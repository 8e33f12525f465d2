#!/usr/bin/env bash
# Build the TensorRT FP16 engine for this GPU on first start (kept in the mounted
# /engines volume with its timing cache), then run Triton on the GPU repository.
set -euo pipefail
PLAN=/models/hepascreen_vnet/1/model.plan
CACHE_DIR=${ENGINE_CACHE_DIR:-/engines}
mkdir -p "$CACHE_DIR" "$(dirname "$PLAN")"
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '_')
CACHED="$CACHE_DIR/model_${GPU}.plan"
if [ ! -s "$CACHED" ] || [ /opt/hepascreen/model.onnx -nt "$CACHED" ]; then
    echo "building TensorRT FP16 engine for $GPU (first start only)"
    cd /opt/hepascreen
    python3 -m training.build_engine --onnx /opt/hepascreen/model.onnx --out "$CACHED" \
        --config /models/hepascreen_vnet/config.pbtxt \
        --timing-cache "$CACHE_DIR/timing_${GPU}.cache" \
        --max-batch "${ENGINE_MAX_BATCH:-8}" --opt-batch "${ENGINE_OPT_BATCH:-4}"
fi
cp "$CACHED" "$PLAN"
exec tritonserver --model-repository=/models --strict-model-config=true \
    --http-address="${TRITON_BIND:-0.0.0.0}" --grpc-address="${TRITON_BIND:-0.0.0.0}" \
    --metrics-address="${TRITON_BIND:-0.0.0.0}" "$@"
