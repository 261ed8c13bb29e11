#!/usr/bin/env bash
# Build and benchmark a run's ONNX flavours with trtexec: dense (the baseline), plugin, capped and native.
# docs/trtexec.md explains every command. Without trtexec on PATH it prints the commands and how to get it.
#
#   plugins/trtexec.sh [RUN_DIR]            (default runs/fmnist-tiny; `make trtexec` calls this)
#
# Environment: PYTHON (python with onnx, default python3), BATCHES (default "1 32 128": min, opt and max of the
# profile are their smallest, middle and largest), PLUGIN_LIB (default plugins/build/libtokengate_plugins.so),
# TRTEXEC (default trtexec), DURATION (seconds per benchmark, default 5).
set -euo pipefail

RUN=${1:-runs/fmnist-tiny}
PY=${PYTHON:-python3}
TRTEXEC=${TRTEXEC:-trtexec}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PLUGIN_LIB=${PLUGIN_LIB:-$HERE/build/libtokengate_plugins.so}
read -r -a BATCH_LIST <<<"${BATCHES:-1 32 128}"
DURATION=${DURATION:-5}
OUT="$RUN/trtexec"

flavours=()
for flavour in dense plugin capped native; do
    [[ -f "$RUN/model.$flavour.onnx" ]] && flavours+=("$flavour")
done
if [[ ${#flavours[@]} -eq 0 ]]; then
    echo "no model.<flavour>.onnx in $RUN: export first (tokengate export $RUN --flavor plugin|native|capped)" >&2
    exit 2
fi

# [C, H, W] of the input `images`, read from the ONNX so any image size or channel count works.
chw=$("$PY" -c '
import sys, onnx
graph = onnx.load(sys.argv[1], load_external_data=False).graph
inputs = {v.name: v for v in graph.input}
if "images" not in inputs:
    sys.exit(f"{sys.argv[1]} has no input named images (inputs: {sorted(inputs)})")
dims = inputs["images"].type.tensor_type.shape.dim
if len(dims) != 4 or not all(d.HasField("dim_value") for d in dims[1:]):
    sys.exit(f"{sys.argv[1]}: images must be [B, C, H, W] with static C, H, W")
print("x".join(str(d.dim_value) for d in dims[1:]))
' "$RUN/model.${flavours[0]}.onnx")

sorted_batches=$(printf '%s\n' "${BATCH_LIST[@]}" | sort -n)
min_b=$(head -n1 <<<"$sorted_batches")
max_b=$(tail -n1 <<<"$sorted_batches")
opt_b=$(sed -n "$(( ($(wc -l <<<"$sorted_batches") + 1) / 2 ))p" <<<"$sorted_batches")

# TensorRT 10 builds fp32 unless told --fp16, and times without CUDA graphs, with host copies and without spin
# wait unless told otherwise. TensorRT 11 networks are strongly typed (no --fp16: the engine takes the ONNX's own
# precision, so convert the ONNX for fp16) and those three timing flags became the defaults.
precision_flags=(--fp16)
precision=fp16
timing_flags=(--useCudaGraph --noDataTransfers --useSpinWait)
have_trtexec=false
if command -v "$TRTEXEC" >/dev/null 2>&1; then
    have_trtexec=true
    help=$("$TRTEXEC" --help 2>&1 || true)
    if ! grep -q -- '--fp16' <<<"$help"; then
        precision_flags=()
        precision=typed  # whatever the ONNX holds
    fi
    if grep -q -- '--noCudaGraph' <<<"$help"; then
        timing_flags=()
    fi
fi

# Each step: its flavour, the batch it benchmarks ("-" for preparing/building), and the command line.
steps=()
add_flavour() {
    local flavour=$1 onnx="$RUN/model.$1.onnx" plugin_flags=""
    if [[ $flavour == plugin ]]; then
        steps+=("plugin - $PY $HERE/prepare_onnx.py $onnx $RUN/model.plugin.trt.onnx")
        onnx="$RUN/model.plugin.trt.onnx"
        plugin_flags=" --dynamicPlugins=$PLUGIN_LIB"
    fi
    local engine="$OUT/model.$flavour.$precision.engine"
    steps+=("$flavour - $TRTEXEC --onnx=$onnx --saveEngine=$engine$plugin_flags ${precision_flags[*]:-}\
 --minShapes=images:${min_b}x$chw --optShapes=images:${opt_b}x$chw --maxShapes=images:${max_b}x$chw --skipInference")
    for b in "${BATCH_LIST[@]}"; do
        steps+=("$flavour $b $TRTEXEC --loadEngine=$engine$plugin_flags --shapes=images:${b}x$chw\
 ${timing_flags[*]:-} --warmUp=500 --duration=$DURATION")
    done
}
for flavour in "${flavours[@]}"; do
    add_flavour "$flavour"
done

if ! $have_trtexec; then
    echo "# trtexec commands for $RUN (input images: Bx$chw, profile $min_b/$opt_b/$max_b):"
    for step in "${steps[@]}"; do
        read -r _ _ command <<<"$step"
        echo "$command" | tr -s ' '
    done
    echo "trtexec is not installed: it ships with NVIDIA TensorRT (developer.nvidia.com/tensorrt: the tar or deb" \
        "packages put it in bin/, or use the TensorRT NGC container); put it on PATH and rerun make trtexec."
    exit 0
fi

skip_plugin=false
if [[ " ${flavours[*]} " == *" plugin "* && ! -f "$PLUGIN_LIB" ]]; then
    echo "$PLUGIN_LIB not found: build it with make plugins and TensorRT_ROOT=<TensorRT prefix>;" \
        "skipping the plugin flavour" >&2
    skip_plugin=true
fi

mkdir -p "$OUT"
results=()
for step in "${steps[@]}"; do
    read -r flavour b command <<<"$step"
    if [[ $flavour == plugin ]] && $skip_plugin; then
        continue
    fi
    echo "+ $command" | tr -s ' '
    log="$OUT/$flavour.${b/-/build}.log"
    # shellcheck disable=SC2086  # the command line is split into words on purpose
    if ! $command >"$log" 2>&1; then
        echo "  failed, see $log; its last lines:" >&2
        tail -n 5 "$log" >&2
        continue
    fi
    if [[ $b != - ]]; then
        qps=$(grep -m1 -oE 'Throughput: [0-9.]+' "$log" | awk '{print $2}')
        gpu_ms=$(grep -m1 'GPU Compute Time:' "$log" | grep -oE 'mean = [0-9.]+' | awk '{print $3}')
        results+=("$flavour $b ${qps:-0} ${gpu_ms:-nan}")
    fi
done

# images/s = trtexec's queries/s x batch; the speedup is against the dense engine at the same batch.
echo
printf '%-8s %6s %14s %12s %9s\n' flavour batch images/s "GPU ms" "vs dense"
for row in "${results[@]}"; do
    read -r flavour b qps gpu_ms <<<"$row"
    ips=$(awk -v q="$qps" -v b="$b" 'BEGIN {printf "%.1f", q * b}')
    dense=$(printf '%s\n' "${results[@]}" | awk -v b="$b" '$1 == "dense" && $2 == b {print $3 * b}')
    speedup=$(awk -v i="$ips" -v d="${dense:-0}" 'BEGIN {if (d > 0) printf "%.2fx", i / d; else print "-"}')
    printf '%-8s %6s %14s %12s %9s\n' "$flavour" "$b" "$ips" "$gpu_ms" "$speedup"
done
