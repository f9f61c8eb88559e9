#!/usr/bin/env bash
# Device check of fastgrpo on a GPU machine (DESIGN.md, "Running on a GPU"), in about 8 minutes, offline.
#
# The machine has torch, triton, peft, transformers, accelerate, safetensors, pytest and pytest-benchmark, but
# no diffusers, open_clip_torch or nvtx and no network: those come as wheels in .wheels/ (benchmarks/fetch_wheels.sh
# fills it on a machine with network). Stages, each under its own time limit so that the whole fits the budget; a
# failing stage is recorded and the script goes on:
#   1. install the carried wheels, then fastgrpo itself (editable, no dependencies, no build isolation);
#   2. nvidia-smi and versions;
#   3. pytest -m gpu tests/                                (the GPU tests)
#   4. python -m fastgrpo.kernels.aot --arch 90 --out $OUT/aot   (kernels compile for sm_90, registers, spills)
#   5. fastgrpo train of the tiny editor on cuda, 3 iterations   ($OUT/train_tiny_metrics.jsonl)
#   6. the same for FLUX.1 Kontext's architecture with random weights at 512x512
#      (benchmarks/train_random.py, benchmarks/flux_kontext_random.yaml; $OUT/train_full_metrics.jsonl)
#   7. pytest benchmarks/bench_train_step.py --benchmark-json $OUT/bench_train_step.json
#      (end-to-end iterations against the Flow-GRPO baseline; FASTGRPO_BENCH_SUMMARY=$OUT/summary_train_step.json)
#   8. the kernel and reward benchmarks: pytest benchmarks/ --ignore benchmarks/bench_train_step.py
#      --benchmark-json $OUT/bench_kernels.json  (FASTGRPO_BENCH_SUMMARY=$OUT/summary.json)
# and writes $OUT/device_check.json (date, GPU, commit, every command with its exit code, duration and log).
# Training runs write their run directories to $RUNS (default $TMPDIR/fastgrpo_device_runs, outside $OUT: LoRA and
# checkpoints stay there); only their metrics.jsonl files are copied to $OUT.
#
# Environment: OUT (default ./device_out), PYTHON (default python), FASTGRPO_BENCH_COMMIT (the commit to report;
# default `git rev-parse HEAD`, else "unknown": a copied tree may have no .git), DEVICE_CHECK_BUDGET_S (default 480),
# RUNS (see above).
# Exit status: 0 when every stage passed, 1 otherwise (device_check.json says which).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$(pwd)"
OUT="${OUT:-./device_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python}"
STARTED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
DEADLINE=$(($(date +%s) + ${DEVICE_CHECK_BUDGET_S:-480}))
RUNS="${RUNS:-${TMPDIR:-/tmp}/fastgrpo_device_runs}"
STAGES="$OUT/stages.tsv"
: >"$STAGES"
# Triton's interpreter would make the GPU tests, the AOT compile and the timings meaningless.
unset TRITON_INTERPRET
if [[ -z "${FASTGRPO_BENCH_COMMIT:-}" ]]; then
    FASTGRPO_BENCH_COMMIT="$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
fi
export FASTGRPO_BENCH_COMMIT

# seconds for a stage: at most $1, leaving $2 seconds for the stages after it (never under 20)
limit() {
    local left=$((DEADLINE - $(date +%s) - $2))
    if ((left < 20)); then left=20; fi
    if (($1 < left)); then echo "$1"; else echo "$left"; fi
}

# run_stage NAME LIMIT_S COMMAND...: run with a time limit (SIGINT first, so pytest still writes its JSON),
# log to $OUT/NAME.log, print the log's tail, append "name, exit code, seconds, limit, command" to $STAGES.
run_stage() {
    local name="$1" seconds="$2" rc=0 t0
    shift 2
    echo "=== $name (limit ${seconds}s): $*"
    t0=$(date +%s)
    timeout -s INT -k 30 "$seconds" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
    tail -n 25 "$OUT/$name.log" || true
    echo "=== $name: exit $rc after $(($(date +%s) - t0))s"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" "$seconds" "$*" >>"$STAGES"
}

# 1. Carried wheels (pip picks, per package, the wheel that fits this Python), then fastgrpo.
if compgen -G ".wheels/*.whl" >/dev/null; then
    mapfile -t WHEEL_NAMES < <(for w in .wheels/*.whl; do basename "$w" | cut -d- -f1; done | sort -u)
    run_stage install_wheels "$(limit 60 400)" \
        "$PY" -m pip install --no-index --no-deps --find-links .wheels "${WHEEL_NAMES[@]}"
else
    echo "=== no .wheels/ directory: diffusers, open_clip_torch and nvtx stay missing (see benchmarks/README.md)"
fi
run_stage install_fastgrpo "$(limit 30 380)" "$PY" -m pip install --no-index --no-deps --no-build-isolation -e .
# Should the editable install fail (no setuptools here), the tree still imports from the repository root.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# 2. The machine.
nvidia-smi || true
GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)"
"$PY" - <<'EOF' || true
import importlib.metadata as md
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
for name in ("triton", "fastgrpo", "diffusers", "open_clip_torch", "nvtx", "peft", "transformers", "accelerate",
             "safetensors", "pytest", "pytest-benchmark"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "MISSING")
EOF

# 3-4. GPU tests, AOT compilation.
run_stage gpu_tests "$(limit 80 330)" "$PY" -m pytest -m gpu tests/ -q -p no:cacheprovider
run_stage aot "$(limit 30 310)" "$PY" -m fastgrpo.kernels.aot --arch 90 --out "$OUT/aot"

# 5-6. Short training runs on cuda (no evaluation, one checkpoint at the end); their metrics.jsonl go to $OUT.
TRAIN_ARGS=(runtime.device=cuda runtime.max_steps=3 "logging.output_dir=$RUNS" logging.eval_every=0
    logging.save_every=0 logging.progress=false data.held_out=0)
rm -rf "$RUNS/tiny" "$RUNS/full"
run_stage train_tiny "$(limit 45 285)" "$PY" -m fastgrpo train "${TRAIN_ARGS[@]}" logging.run_name=tiny
cp "$RUNS/tiny/metrics.jsonl" "$OUT/train_tiny_metrics.jsonl" 2>/dev/null || true
run_stage train_full "$(limit 75 240)" "$PY" benchmarks/train_random.py train \
    --config benchmarks/flux_kontext_random.yaml "${TRAIN_ARGS[@]}" logging.run_name=full
cp "$RUNS/full/metrics.jsonl" "$OUT/train_full_metrics.jsonl" 2>/dev/null || true

# 7-8. Benchmarks (each summary is rewritten after every benchmark, so a cut-off run still leaves what it measured).
FASTGRPO_BENCH_SUMMARY="$OUT/summary_train_step.json" run_stage bench_train_step "$(limit 240 40)" \
    "$PY" -m pytest benchmarks/bench_train_step.py -q -p no:cacheprovider \
    --benchmark-json "$OUT/bench_train_step.json"
FASTGRPO_BENCH_SUMMARY="$OUT/summary.json" run_stage bench_kernels "$(limit 150 5)" \
    "$PY" -m pytest benchmarks/ --ignore=benchmarks/bench_train_step.py -q -p no:cacheprovider \
    --benchmark-json "$OUT/bench_kernels.json" --benchmark-max-time=0.1 --benchmark-min-rounds=5

# The record of this run.
FINISHED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
STARTED="$STARTED" FINISHED="$FINISHED" GPU_NAME="$GPU_NAME" OUT="$OUT" STAGES="$STAGES" \
    SCRIPT_COMMAND="benchmarks/device_check.sh $*" "$PY" - <<'EOF'
import json
import os
from pathlib import Path

out = Path(os.environ["OUT"])
stages = []
for line in Path(os.environ["STAGES"]).read_text().splitlines():
    name, rc, seconds, limit, command = line.split("\t", 4)
    stages.append({"name": name, "exit_code": int(rc), "seconds": int(seconds), "limit_s": int(limit),
                   "timed_out": int(rc) in (124, 130, 137), "command": command, "log": str(out / f"{name}.log")})
record = {
    "started": os.environ["STARTED"],
    "finished": os.environ["FINISHED"],
    "gpu": os.environ["GPU_NAME"] or None,
    "commit": os.environ["FASTGRPO_BENCH_COMMIT"],
    "command": os.environ["SCRIPT_COMMAND"].strip(),
    "passed": all(s["exit_code"] == 0 for s in stages),
    "stages": stages,
    "paths": {name: str(out / name) for name in ("bench_kernels.json", "summary.json", "aot", "bench_train_step.json",
              "summary_train_step.json", "train_tiny_metrics.jsonl", "train_full_metrics.jsonl") if (out / name).exists()},
}
(out / "device_check.json").write_text(json.dumps(record, indent=1) + "\n")
print(json.dumps({k: record[k] for k in ("gpu", "commit", "passed")}), [(s["name"], s["exit_code"]) for s in stages])
EOF
if awk -F'\t' '$2 != 0 { bad = 1 } END { exit !bad }' "$STAGES"; then
    rm -f "$STAGES"
    exit 1
fi
rm -f "$STAGES"
