"""The ``fastgrpo`` command line: ``train`` and ``env``."""

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
        "fastgrpo train: the GRPO training loop is not implemented yet in this version.\n"
        "Available now: fastgrpo.kernels (fused SDE step, log-prob/KL and GRPO loss with Triton kernels and\n"
        "PyTorch references) and fastgrpo.core (schedules, group advantages, the per-step objective).\n"
        "Coming: the FLUX.1 Kontext / Qwen-Image-Edit adapters and a built-in tiny editor, rewards, data sets,\n"
        "and this command training the tiny editor on a CPU by default. Nothing was trained."
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastgrpo", description="Online GRPO for flow-matching image editors.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a LoRA with GRPO (default: the built-in tiny editor on CPU)")
    train.set_defaults(func=cmd_train)
    env = sub.add_parser("env", help="print versions, devices, Triton mode and attention backends")
    env.set_defaults(func=cmd_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
