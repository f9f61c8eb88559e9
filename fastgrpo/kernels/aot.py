"""Ahead-of-time compilation of every Triton kernel for a CUDA architecture, without a GPU.

``python -m fastgrpo.kernels.aot --arch 90 --out DIR`` compiles each kernel in its representative
specialisations (the dtypes and flags the trainer uses) with ``triton.compile`` for ``GPUTarget("cuda", arch,
32)``, writes the PTX, runs the bundled ``ptxas -v`` for register and spill counts, and prints one JSON line per
kernel. Tests use it to check that kernels which pass the interpreter also compile for the GPU, with vector
loads and no local-memory spills. Must run with ``TRITON_INTERPRET`` unset (the interpreter replaces
``triton.jit`` functions).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DIV16 = [["tt.divisibility", 16]]


@dataclass
class AotResult:
    """What one compiled specialisation looks like (registers and spills from ``ptxas -v``)."""

    name: str
    arch: int
    ptx_path: str
    vector_loads: int
    vector_stores: int
    registers: int
    spill_stores: int
    spill_loads: int
    local_bytes: int


def _spec(kernel: Any, types: dict[str, str], constexprs: dict[str, Any], num_warps: int) -> dict[str, Any]:
    """Signature for ``ASTSource``: pointers and strides get the 16-divisibility the JIT infers for aligned data."""
    names = kernel.arg_names
    if "KIND" in names:  # the sampler (0: SPEC S1's SDE) unless the specialisation names one
        constexprs = {"KIND": 0} | constexprs
    signature = {n: ("constexpr" if n in constexprs else types[n]) for n in names}
    attrs = {
        (i,): DIV16
        for i, n in enumerate(names)
        if n not in constexprs and (types[n].startswith("*") or n.endswith("_stride") or n == "N")
    }
    return {"fn": kernel, "signature": signature, "constexprs": constexprs, "attrs": attrs, "num_warps": num_warps}


def kernel_specs() -> dict[str, dict[str, Any]]:
    """Representative specialisations of every kernel, keyed by a readable name."""
    from fastgrpo.kernels.grpo import fused as grpo_fused
    from fastgrpo.kernels.sde import fused, ops

    specs: dict[str, dict[str, Any]] = {}
    for dt in ("bf16", "fp32"):
        # (NOISE_MODE, SEED_FROM_PTR, int type of seed/offset: the JIT passes small python ints as i32)
        for mode, seed_ptr, int_t in ((1, False, "i64"), (2, True, "i64"), (2, False, "i32"), (2, False, "i64")):
            types = {"x_ptr": f"*{dt}", "v_ptr": f"*{dt}", "noise_ptr": "*fp32", "out_ptr": f"*{dt}"}
            types |= {"t_ptr": "*fp32", "tn_ptr": "*fp32", "seed_ptr": "*i64", "partial_ptr": "*fp32"}
            types |= {k: "i32" for k in ("N", "P", "x_stride", "v_stride", "noise_stride", "t_stride")}
            types |= {"noise_level": "fp32", "t_cap": "fp32", "seed": int_t, "offset": int_t}
            const = {"NOISE_MODE": mode, "SEED_FROM_PTR": seed_ptr, "Q": ops.QUARTER}
            name = f"sde_step_{dt}_" + ("noise" if mode == 1 else ("philox_state" if seed_ptr else f"philox_{int_t}"))
            specs[name] = _spec(fused._sde_step_partial_kernel, types, const, ops.NUM_WARPS)
            if seed_ptr:  # the trainer's rollout specialisation, also for the coefficients-preserving sampler
                cps = _spec(fused._sde_step_partial_kernel, types, const | {"KIND": 1}, ops.NUM_WARPS)
                specs[f"{name}_cps"] = cps
        lp_types = {"xn_ptr": f"*{dt}", "x_ptr": f"*{dt}", "v_ptr": f"*{dt}", "vref_ptr": f"*{dt}"}
        lp_types |= {"t_ptr": "*fp32", "tn_ptr": "*fp32", "plp_ptr": "*fp32", "pkl_ptr": "*fp32"}
        lp_types |= {k: "i32" for k in ("N", "P", "xn_stride", "x_stride", "v_stride", "vref_stride", "t_stride")}
        lp_types |= {"noise_level": "fp32", "t_cap": "fp32"}
        const = {"HAS_LOGP": True, "HAS_KL": True, "Q": ops.QUARTER}
        specs[f"logprob_kl_{dt}"] = _spec(fused._logprob_kl_partial_kernel, lp_types, const, ops.NUM_WARPS)
        cps = _spec(fused._logprob_kl_partial_kernel, lp_types, const | {"KIND": 1}, ops.NUM_WARPS)
        specs[f"logprob_kl_{dt}_cps"] = cps
        bw_types = {k: v for k, v in lp_types.items() if k not in ("plp_ptr", "pkl_ptr", "P")}
        bw_types |= {"glp_ptr": "*fp32", "gkl_ptr": "*fp32", "gv_ptr": f"*{dt}"}
        const = {"HAS_LOGP": True, "HAS_KL": True, "MEAN": True, "KL_EXACT": True, "BLOCK": ops.BACKWARD_BLOCK}
        specs[f"logprob_kl_backward_{dt}"] = _spec(fused._logprob_kl_backward_kernel, bw_types, const, ops.NUM_WARPS)
        cps = _spec(fused._logprob_kl_backward_kernel, bw_types, const | {"KIND": 1}, ops.NUM_WARPS)
        specs[f"logprob_kl_backward_{dt}_cps"] = cps
    fin_types = {"plp_ptr": "*fp32", "pkl_ptr": "*fp32", "logp_ptr": "*fp32", "kl_ptr": "*fp32"}
    fin_types |= {"t_ptr": "*fp32", "tn_ptr": "*fp32", "t_stride": "i32", "N": "i32", "P": "i32"}
    fin_types |= {"noise_level": "fp32", "t_cap": "fp32"}
    const = {"HAS_LOGP": True, "HAS_KL": True, "MEAN": True, "KL_EXACT": True, "BLOCK_P": 64}
    specs["finalize"] = _spec(fused._finalize_kernel, fin_types, const, 1)
    specs["finalize_cps"] = _spec(fused._finalize_kernel, fin_types, const | {"KIND": 1}, 1)
    loss_types = {k: "*fp32" for k in ("logp_ptr", "old_ptr", "adv_ptr", "kl_ptr", "grad_logp_ptr", "stats_ptr")}
    loss_types |= {"M": "i32", "ADV_DIV": "i32", "clip_low": "fp32", "clip_high": "fp32", "beta": "fp32"}
    specs["grpo_loss"] = _spec(grpo_fused._grpo_loss_kernel, loss_types, {"HAS_KL": True, "BLOCK": 256}, 4)
    return specs


def _ptxas(arch: int) -> str:
    from triton.backends.nvidia import compiler

    return compiler.get_ptxas(arch).path


def _ptxas_stats(ptx_path: Path, arch: int) -> dict[str, int]:
    gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    out = subprocess.run(
        [_ptxas(arch), "-v", f"--gpu-name={gpu}", str(ptx_path), "-o", os.devnull],
        capture_output=True,
        text=True,
        check=True,
    ).stderr

    def grab(pattern: str) -> int:
        m = re.search(pattern, out)
        return int(m.group(1)) if m else 0

    return {
        "registers": grab(r"Used (\d+) registers"),
        "spill_stores": grab(r"(\d+) bytes spill stores"),
        "spill_loads": grab(r"(\d+) bytes spill loads"),
        "local_bytes": grab(r"(\d+) bytes stack frame"),
    }


def compile_all(arch: int, out_dir: Path) -> list[AotResult]:
    """Compile every specialisation of :func:`kernel_specs` for ``sm_<arch>``; PTX files go to ``out_dir``."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter replaces the kernels that are compiled here")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name, spec in kernel_specs().items():
        src = ASTSource(spec["fn"], spec["signature"], constexprs=spec["constexprs"], attrs=spec["attrs"])
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": spec["num_warps"]})
        ptx = compiled.asm["ptx"]
        ptx_path = out_dir / f"{name}.sm{arch}.ptx"
        ptx_path.write_text(ptx)
        results.append(
            AotResult(
                name=name,
                arch=arch,
                ptx_path=str(ptx_path),
                vector_loads=len(re.findall(r"ld\.global(?:\.\w+)*\.v[248]", ptx)),
                vector_stores=len(re.findall(r"st\.global(?:\.\w+)*\.v[248]", ptx)),
                **_ptxas_stats(ptx_path, arch),
            )
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", help="compute capability, e.g. 90 (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="directory for the PTX files")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="fastgrpo-aot-"))
    for arch in args.arch or [90]:
        for result in compile_all(arch, out):
            print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
