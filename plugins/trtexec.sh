#!/usr/bin/env bash
# Build and benchmark a run's ONNX flavours with trtexec: dense (the baseline), plugin, capped and native.
# docs/trtexec.md explains every command. Without trtexec on PATH it prints the commands and how to get it.
#
#   plugins/trtexec.sh [RUN_DIR]            (default runs/fmnist-tiny; `make trtexec` calls this)
#
# Environment: PYTHON (python with onnx, default python3), BATCHES (default "1 32 128": min, opt and max of the
# profile are their smallest, middle and largest), PLUGIN_LIB (default plugins/build/libtokengate_plugins.so),
# TRTEXEC (default trtexec), DURATION (seconds per benchmark, default 5), PRECISION (fp16 or fp32, default fp16).
#
# Every row of the table says its precision and whether it ran as a CUDA graph. Engines with data-dependent shapes
# (plugin, native) cannot be captured, so every flavour is timed without graphs, and the static ones (dense,
# capped) also with graphs; "vs dense" divides by the dense row of the same batch, precision and graph mode.
# Exits non-zero when a step fails or a log lacks trtexec's summary lines, naming the log.
set -euo pipefail

RUN=${1:-runs/fmnist-tiny}
PY=${PYTHON:-python3}
TRTEXEC=${TRTEXEC:-trtexec}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PLUGIN_LIB=${PLUGIN_LIB:-$HERE/build/libtokengate_plugins.so}
read -r -a BATCH_LIST <<<"${BATCHES:-1 32 128}"
DURATION=${DURATION:-5}
PRECISION=${PRECISION:-fp16}
OUT="$RUN/trtexec"
if [[ $PRECISION != fp16 && $PRECISION != fp32 ]]; then
    echo "PRECISION must be fp16 or fp32, got '$PRECISION'" >&2
    exit 2
fi

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
# precision, so for fp16 the ONNX is converted first, fp32 at its edges) and those three timing flags became the
# defaults (--noCudaGraph turns graphs off). Without trtexec the TensorRT 10 commands are printed.
trt11=false
have_trtexec=false
if command -v "$TRTEXEC" >/dev/null 2>&1; then
    have_trtexec=true
    help=$("$TRTEXEC" --help 2>&1 || true)
    if ! grep -q -- '--fp16' <<<"$help"; then
        trt11=true
    fi
fi
precision_flags=()
if [[ $PRECISION == fp16 ]] && ! $trt11; then
    precision_flags=(--fp16)
fi
if $trt11; then
    graph_flags=""
    nograph_flags="--noCudaGraph"
else
    graph_flags="--useCudaGraph --noDataTransfers --useSpinWait"
    nograph_flags="--noDataTransfers --useSpinWait"
fi

# Each step: its flavour, the batch it benchmarks ("-" for preparing/building), what it does (prepare, build, or the
# CUDA-graph mode of a benchmark: on/off), and the command line.
steps=()
add_flavour() {
    local flavour=$1 onnx="$RUN/model.$1.onnx" plugin_flags="" prepare_flags=""
    if $trt11 && [[ $PRECISION == fp16 ]]; then
        prepare_flags="--fp16 "
    fi
    if [[ $flavour == plugin || -n $prepare_flags ]]; then
        local prepared="$RUN/model.$flavour.trt.$PRECISION.onnx"
        steps+=("$flavour - prepare $PY $HERE/prepare_onnx.py $prepare_flags$onnx $prepared")
        onnx=$prepared
    fi
    if [[ $flavour == plugin ]]; then
        plugin_flags=" --dynamicPlugins=$PLUGIN_LIB"
    fi
    local engine="$OUT/model.$flavour.$PRECISION.engine"
    steps+=("$flavour - build $TRTEXEC --onnx=$onnx --saveEngine=$engine$plugin_flags ${precision_flags[*]:-}\
 --minShapes=images:${min_b}x$chw --optShapes=images:${opt_b}x$chw --maxShapes=images:${max_b}x$chw --skipInference")
    local modes=(off)
    if [[ $flavour == dense || $flavour == capped ]]; then
        modes=(off on)  # static shapes: also timed as CUDA graphs
    fi
    for b in "${BATCH_LIST[@]}"; do
        for mode in "${modes[@]}"; do
            local flags=$nograph_flags
            [[ $mode == on ]] && flags=$graph_flags
            steps+=("$flavour $b $mode $TRTEXEC --loadEngine=$engine$plugin_flags --shapes=images:${b}x$chw\
 $flags --warmUp=500 --duration=$DURATION")
        done
    done
}
for flavour in "${flavours[@]}"; do
    add_flavour "$flavour"
done

if ! $have_trtexec; then
    echo "# trtexec commands for $RUN (input images: Bx$chw, profile $min_b/$opt_b/$max_b):"
    for step in "${steps[@]}"; do
        read -r _ _ _ command <<<"$step"
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
problems=()
failed_flavours=" "
for step in "${steps[@]}"; do
    read -r flavour b mode command <<<"$step"
    if [[ $flavour == plugin ]] && $skip_plugin; then
        continue
    fi
    if [[ $failed_flavours == *" $flavour "* ]]; then
        continue  # its preparation or build failed: nothing to run
    fi
    echo "+ $command" | tr -s ' '
    log="$OUT/$flavour.$mode.log"
    [[ $b != - ]] && log="$OUT/$flavour.b$b.graphs-$mode.log"
    # shellcheck disable=SC2086  # the command line is split into words on purpose
    if ! $command >"$log" 2>&1; then
        echo "  failed, see $log; its last lines:" >&2
        tail -n 5 "$log" >&2
        problems+=("$log: the command failed")
        [[ $b == - ]] && failed_flavours+="$flavour "
        continue
    fi
    if [[ $b != - ]]; then
        qps=$( (grep -m1 -oE 'Throughput: [0-9.]+' "$log" || true) | awk '{print $2}')
        gpu_ms=$( (grep -m1 'GPU Compute Time:' "$log" || true) | (grep -oE 'mean = [0-9.]+' || true) |
            awk '{print $3}')
        if [[ -z $qps || -z $gpu_ms ]]; then
            missing=$([[ -z $qps ]] && echo '"Throughput:"')
            missing+=$([[ -z $qps && -z $gpu_ms ]] && echo ' and ')
            missing+=$([[ -z $gpu_ms ]] && echo '"GPU Compute Time: ... mean ="')
            echo "  cannot read $log: it has no $missing line (did trtexec stop early, or change its summary?)" >&2
            problems+=("$log: no $missing line")
            continue
        fi
        graphs=$mode
        if [[ $mode == on ]] && grep -q 'CUDA graph capture failed' "$log"; then
            graphs=failed  # trtexec fell back to plain launches: it ran without a graph
        fi
        results+=("$flavour $b $PRECISION $graphs $qps $gpu_ms")
    fi
done

# images/s = trtexec's queries/s x batch; the speedup is against the dense engine at the same batch, precision and
# CUDA-graph mode, so no row is compared with a run that had graphs when it had none.
echo
printf '%-8s %6s %9s %6s %14s %10s %9s\n' flavour batch precision graphs images/s "GPU ms" "vs dense"
for row in "${results[@]}"; do
    read -r flavour b precision graphs qps gpu_ms <<<"$row"
    ips=$(awk -v q="$qps" -v b="$b" 'BEGIN {printf "%.1f", q * b}')
    ran=${graphs/failed/off}
    dense=$(printf '%s\n' "${results[@]}" | awk -v b="$b" -v p="$precision" -v g="$ran" \
        '$1 == "dense" && $2 == b && $3 == p && ($4 == g || ($4 == "failed" && g == "off")) {print $5 * b; exit}')
    speedup=$(awk -v i="$ips" -v d="${dense:-0}" 'BEGIN {if (d > 0) printf "%.2fx", i / d; else print "-"}')
    printf '%-8s %6s %9s %6s %14s %10s %9s\n' "$flavour" "$b" "$precision" "$graphs" "$ips" "$gpu_ms" "$speedup"
done
if $trt11 && [[ $PRECISION == fp16 ]]; then
    echo "precision fp16: TensorRT 11 builds the ONNX's own types, so each ONNX was converted to fp16" \
        "(fp32 at its edges)"
fi
echo "graphs: whether the timed run was a CUDA graph (failed: capture failed, so it ran without one and is compared" \
    "with dense without one); plugin and native have data-dependent shapes and cannot be one"
if [[ ${#problems[@]} -gt 0 ]]; then
    echo >&2
    echo "trtexec.sh: ${#problems[@]} step(s) gave no result:" >&2
    printf '  %s\n' "${problems[@]}" >&2
    exit 1
fi
