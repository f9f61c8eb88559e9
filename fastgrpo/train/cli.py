"""The ``fastgrpo`` command line: ``train``, ``env`` and ``data check``."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import platform
import sys

_PACKAGES = ("torch", "triton", "diffusers", "peft", "open_clip_torch", "nvtx", "safetensors", "xformers", "flash-attn")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cmd_env(args: argparse.Namespace) -> int:
    """Print versions, the device, the Triton mode and the attention backends available."""
    import torch

    from fastgrpo import __version__, _env

    print(f"fastgrpo {__version__}  python {platform.python_version()}  {platform.platform()}")
    for dist in _PACKAGES:
        print(f"  {dist:<16} {_version(dist)}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}")
    else:
        print("  cuda: no device (kernels run the PyTorch reference; Triton only under TRITON_INTERPRET=1)")
    print(f"  triton mode: {'interpreter (TRITON_INTERPRET=1)' if _env.triton_interpret() else 'compiled'}")
    backends = ["sdpa"] + [name for name in ("xformers", "flash_attn") if importlib.util.find_spec(name)]
    print(f"  attention backends: {', '.join(backends)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Placeholder until the trainer lands: say plainly what exists and what does not."""
    print(
        "fastgrpo train: the GRPO training loop is not implemented yet in this version. Nothing was trained.\n"
        "Available now: fastgrpo.kernels (fused SDE step, log-prob/KL, GRPO loss), fastgrpo.core (schedules,\n"
        "advantages, the per-step objective), fastgrpo.models (FLUX.1 Kontext, Qwen-Image-Edit, the built-in tiny\n"
        "editor, LoRA), fastgrpo.rewards (MLLM judge, CLIP, rule rewards), fastgrpo.data (data sets, buckets, the\n"
        "group sampler; `fastgrpo data check`), fastgrpo.train.config (configs/*.yaml).\n"
        "Coming: this command running the loop, by default on the tiny editor with the synthetic task on a CPU."
    )
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    """Validate a data set and print its summary (the logic lives in :mod:`fastgrpo.data.check`)."""
    from fastgrpo.data.check import run_check

    return run_check(
        args.path,
        preset=args.preset,
        root=args.root,
        max_bad_fraction=args.max_bad_fraction,
        as_json=args.json,
        quick=args.quick,
        buckets=args.buckets,
    )


def _add_data_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="inspect edit data sets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="validate a data set and print a summary (exit 1: too many bad)")
    check.add_argument("path", help="a .jsonl/.json/.parquet file or a folder of them")
    check.add_argument("--preset", default="auto", help="column layout (auto, fastgrpo, magicbrush, emu_edit, ...)")
    check.add_argument("--root", default=None, help="folder image paths are relative to (default: the file's)")
    check.add_argument("--max-bad-fraction", type=float, default=0.05, help="tolerated bad fraction (0.05 = 5%%)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--quick", action="store_true", help="read image headers only, do not decode pixels")
    check.add_argument("--buckets", default=None, help="also count records per bucket, e.g. 512x512,768x512")
    check.set_defaults(func=cmd_data_check)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastgrpo", description="Online GRPO for flow-matching image editors.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a LoRA with GRPO (default: the built-in tiny editor on CPU)")
    train.set_defaults(func=cmd_train)
    env = sub.add_parser("env", help="print versions, devices, Triton mode and attention backends")
    env.set_defaults(func=cmd_env)
    _add_data_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
