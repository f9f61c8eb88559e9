#!/usr/bin/env bash
# Fill .wheels/ with the wheels the offline GPU machine lacks (run on a development machine with network access).
#
# The GPU machine has torch, triton, peft, transformers, accelerate, safetensors, pytest and pytest-benchmark but not
# diffusers, open_clip_torch or nvtx (nor ftfy, timm, wcwidth, which open_clip_torch needs, nor httpx and its own
# dependencies, which the reward judge needs). This downloads those
# packages (no dependencies) at the versions installed in the project's virtual environment, as wheels only. nvtx
# is compiled, so it is fetched once per Python version in WHEEL_PYTHON_VERSIONS; device_check.sh lets pip choose
# the one that fits. Carry .wheels/ to the machine (it is git-ignored), then run benchmarks/device_check.sh.
#
# Usage: benchmarks/fetch_wheels.sh [--print] [extra packages...]
#   --print                  only print the pinned packages and the pip commands
# Environment: VENV_PIP (default .venv/bin/pip: whose `pip freeze` gives the pins), PIP (default: VENV_PIP),
#   WHEEL_PYTHON_VERSIONS (default "3.10 3.11 3.12 3.13"),
#   WHEEL_PLATFORMS (default "manylinux2014_x86_64 manylinux_2_28_x86_64": what the GPU machine's glibc accepts).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV_PIP="${VENV_PIP:-.venv/bin/pip}"
PIP="${PIP:-$VENV_PIP}"
PRINT_ONLY=0
if [[ "${1:-}" == "--print" ]]; then
    PRINT_ONLY=1
    shift
fi
PACKAGES=(diffusers open_clip_torch nvtx ftfy timm wcwidth httpx httpcore h11 anyio "$@")

# name==version for each package, from `pip freeze` (names compared the way pip normalises them: - _ . alike)
normalise() { tr '[:upper:]_.' '[:lower:]--' <<<"$1"; }
FREEZE="$("$VENV_PIP" freeze)"
PINS=()
for package in "${PACKAGES[@]}"; do
    want="$(normalise "$package")"
    pin=""
    while IFS= read -r line; do
        if [[ "$line" == *==* && "$(normalise "${line%%==*}")" == "$want" ]]; then
            pin="$line"
        fi
    done <<<"$FREEZE"
    if [[ -z "$pin" ]]; then
        echo "error: $package is not installed in the environment of $VENV_PIP; install it there first" >&2
        exit 1
    fi
    PINS+=("$pin")
done
echo "pins: ${PINS[*]}"

PLATFORM_ARGS=()
for platform in ${WHEEL_PLATFORMS:-manylinux2014_x86_64 manylinux_2_28_x86_64}; do
    PLATFORM_ARGS+=(--platform "$platform")
done
if ((PRINT_ONLY == 0)); then
    mkdir -p .wheels
fi
FAILED=()
for version in ${WHEEL_PYTHON_VERSIONS:-3.10 3.11 3.12 3.13}; do
    cmd=("$PIP" download --no-deps --only-binary=:all: -d .wheels
        --python-version "$version" --implementation cp "${PLATFORM_ARGS[@]}" "${PINS[@]}")
    echo "${cmd[*]}"
    if ((PRINT_ONLY == 0)) && ! "${cmd[@]}"; then
        FAILED+=("$version")
    fi
done
if ((${#FAILED[@]} > 0)); then
    echo "warning: no complete set of wheels for Python ${FAILED[*]}; the GPU machine must not run those" >&2
fi
if ((PRINT_ONLY == 0)); then
    ls -la .wheels
    du -sh .wheels
fi
