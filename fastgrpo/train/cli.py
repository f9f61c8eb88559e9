"""The ``fastgrpo`` command line: ``train``, ``eval``, ``compare``, ``bench-learning``, ``env`` and ``data check``."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
from typing import Any

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
    from fastgrpo.models.checkpoints import attention_backends

    backends = attention_backends()  # model.attention_backend values; null = PyTorch SDPA
    usable = [name for name, missing in backends.items() if missing is None and name != "native"]
    print(f"  attention backends: {', '.join(['sdpa (null / native)', *usable])}")
    for name, missing in backends.items():
        if missing is not None:
            print(f"    {name}: unavailable, {missing}")
    return 0


def _load_cli_config(args: argparse.Namespace) -> Any:
    from fastgrpo.train.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "recipe", None):
        from fastgrpo.train.recipes import get_recipe

        overrides = [*get_recipe(args.recipe).overrides, *overrides]  # the command line's own overrides win
    if getattr(args, "output_dir", None):
        overrides.append(f"logging.output_dir={args.output_dir}")
    if getattr(args, "profile_steps", None):
        overrides.append(f"profile.steps={args.profile_steps}")
    return load_config(args.config, overrides)


def _fail(command: str, error: BaseException) -> int:
    print(f"fastgrpo {command}: error: {error}", file=sys.stderr)
    return 2 if isinstance(error, ValueError) else 1


def cmd_train(args: argparse.Namespace) -> int:
    """``fastgrpo train``: GRPO on the config (the built-in demo by default); resumes a run directory."""
    import logging

    from fastgrpo.train.errors import TrainingError, TrainingInterrupted
    from fastgrpo.train.loop import train
    from fastgrpo.train.storage.checkpoints import CheckpointError
    from fastgrpo.train.storage.run_dir import RunDirError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = _load_cli_config(args)
        result = train(cfg)
    except TrainingInterrupted as error:
        print(f"fastgrpo train: {error}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # outside the loop's own handlers (start-up, the first evaluation, closing)
        print("fastgrpo train: interrupted (SIGINT); the checkpoints already written are intact", file=sys.stderr)
        return 130
    except (ValueError, TrainingError, CheckpointError, RunDirError, FileNotFoundError) as error:
        return _fail("train", error)
    if os.environ.get("RANK", "0") == "0":
        summary = f"done: {result.steps_done} iterations in {result.run_dir}"
        if result.initial_eval is not None and result.final_eval is not None:
            summary += f"; evaluation reward {result.initial_eval:.4f} -> {result.final_eval:.4f}"
        if result.ended_early:
            summary += f"; ended early: {result.ended_early}"
        if result.best is not None and (result.run_dir / "lora" / "best").is_dir():
            summary += f"; best gold reward {result.best['gold_reward_mean']:.4f} at iteration {result.best['step']}"
            summary += f" in {result.run_dir / 'lora' / 'best'}"
        if (result.run_dir / "report.md").is_file():
            summary += f"; base vs trained in {result.run_dir / 'report.md'}"
        if result.stopped_by:
            summary = (
                f"stopped by {result.stopped_by} after {result.steps_done} iterations; resume with the same command"
            )
        print(summary, file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``fastgrpo eval``: ODE evaluation with ``eval_steps`` of the base model, a LoRA or a checkpoint."""
    import json

    from fastgrpo.train.evaluate import run_evaluation

    try:
        cfg = _load_cli_config(args)
        result = run_evaluation(cfg, lora=args.lora, checkpoint=args.checkpoint, data=args.data, limit=args.limit)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        return _fail("eval", error)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"evaluation reward {result['eval_reward_mean']:.4f} ± {result['eval_reward_se']:.4f} on "
            f"{result['eval_conditions']} conditions ({result['eval_steps']} ODE steps, {result['weights']})"
        )
        for key, value in sorted(result.items()):
            if key.startswith("eval/"):
                print(f"  {key[5:]:<24} {value:.4f}")
        if any(key.startswith("gold/") and key[5:] not in {k[5:] for k in result if k.startswith("eval/")}
               for key in result):  # fmt: skip
            print(f"gold reward {result['gold_reward_mean']:.4f} ± {result['gold_reward_se']:.4f}")
            for key, value in sorted(result.items()):
                if key.startswith("gold/"):
                    print(f"  {key[5:]:<24} {value:.4f}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``fastgrpo compare``: the base model vs each ``--lora`` on the same conditions; writes report.png/.json/.md
    into ``--out`` and prints the Markdown table (the logic lives in :func:`fastgrpo.train.report.run_compare`)."""
    from fastgrpo.train.report import run_compare

    try:
        cfg = _load_cli_config(args)
        comparison, paths = run_compare(cfg, args.lora, data=args.data, limit=args.limit, out=args.out, rows=args.rows)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        return _fail("compare", error)
    print(comparison.markdown())
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def cmd_bench_learning(args: argparse.Namespace) -> int:
    """``fastgrpo bench-learning``: named recipes trained for the same time, held-out reward against time and
    rollouts (the logic lives in :mod:`fastgrpo.train.learning`)."""
    from pathlib import Path

    from fastgrpo.train.errors import TrainingError
    from fastgrpo.train.learning import run_learning_benchmark, summary_table

    def ints(text: str, what: str) -> list[int]:
        try:
            return [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"{what} must be comma-separated integers, e.g. 0,1,2: got {text!r}") from None

    try:
        result = run_learning_benchmark(
            [name.strip() for name in args.recipes.split(",") if name.strip()], ints(args.seeds, "--seeds"),
            minutes=args.minutes, held_out_sets=ints(args.held_out_sets, "--held-out-sets"),
            eval_every=args.eval_every, out=Path(args.out), overrides=args.overrides,
            max_iterations=args.max_iterations, log=lambda line: print(line, file=sys.stderr, flush=True),
        )  # fmt: skip
    except (ValueError, TrainingError, FileNotFoundError, OSError) as error:
        return _fail("bench-learning", error)
    print(summary_table(result))
    print(f"wrote {Path(args.out) / 'learning.json'} and {Path(args.out) / 'learning.png'}")
    return 0


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config (default: the built-in demo, configs/demo.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. grpo.beta=0")


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
        split=args.split,
    )


def _add_data_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="inspect edit data sets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="validate a data set and print a summary (exit 1: too many bad)")
    check.add_argument("path", help="a .jsonl/.json/.parquet/.arrow file, a folder of them, a save_to_disk folder "
                                    "or hf://owner/name (from the local Hugging Face cache)")  # fmt: skip
    check.add_argument("--preset", default="auto", help="column layout (auto, fastgrpo, magicbrush, emu_edit, ...)")
    check.add_argument("--root", default=None, help="folder image paths are relative to (default: the file's)")
    check.add_argument("--max-bad-fraction", type=float, default=0.05, help="tolerated bad fraction (0.05 = 5%%)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--quick", action="store_true", help="read image headers only, do not decode pixels")
    check.add_argument("--buckets", default=None, help="also count records per bucket, e.g. 512x512,768x512")
    check.add_argument("--split", default=None, help="Hugging Face data set split (default: train, or the only one)")
    check.set_defaults(func=cmd_data_check)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastgrpo", description="Online GRPO for flow-matching image editors.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a LoRA with GRPO (default: the built-in tiny editor on CPU)")
    _add_config_args(train)
    train.add_argument("--output-dir", default=None, help="parent of run directories (logging.output_dir)")
    train.add_argument("--recipe", default=None,
                       help="a named recipe's overrides first (README Recipes), e.g. flow_grpo")  # fmt: skip
    train.add_argument("--profile-steps", default=None, metavar="A:B",
                       help="iterations [A, B) between cudaProfilerStart/Stop (profile.steps), for "
                            "nsys profile --capture-range=cudaProfilerApi")  # fmt: skip
    train.set_defaults(func=cmd_train)
    evaluate = sub.add_parser("eval", help="ODE evaluation of the base model, a LoRA or a checkpoint")
    _add_config_args(evaluate)
    weights = evaluate.add_mutually_exclusive_group()
    weights.add_argument("--lora", default=None, help="a LoRA directory (diffusers format, e.g. RUN/lora)")
    weights.add_argument("--checkpoint", default=None, help="a checkpoint directory (RUN/checkpoints/step-N)")
    evaluate.add_argument("--data", default=None, help="a data file/folder to evaluate (default: the held-out set)")
    evaluate.add_argument("--limit", type=int, default=None, help="evaluate at most this many conditions")
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    evaluate.set_defaults(func=cmd_eval)
    compare = sub.add_parser("compare", help="the base model vs LoRAs on the same held-out conditions (a report)")
    _add_config_args(compare)
    compare.add_argument("--lora", action="append", required=True, metavar="DIR",
                         help="a LoRA directory (RUN/lora, RUN/lora/best, RUN/checkpoints/step-N/lora); repeat it to "
                              "compare several (of one rank and targets)")  # fmt: skip
    compare.add_argument("--data", default=None, help="a data file/folder to compare on (default: the held-out set)")
    compare.add_argument("--limit", type=int, default=None, help="compare on at most this many conditions")
    compare.add_argument("--rows", type=int, default=None,
                         help="conditions shown in report.png (default: eval.report_conditions, 0: none)")  # fmt: skip
    compare.add_argument("--out", default="compare", help="folder of report.png/.json/.md (default: ./compare)")
    compare.set_defaults(func=cmd_compare)
    bench = sub.add_parser("bench-learning", help="recipes trained for the same time: held-out reward vs time/rollouts")
    bench.add_argument("--recipes", default="flow_grpo,cps,flow_grpo_fast,flow_grpo_fast_sde",
                       help="comma-separated recipe names (README Recipes)")  # fmt: skip
    bench.add_argument("--seeds", default="0,1,2", help="rollout seeds (sampler.seed), comma-separated")
    bench.add_argument("--held-out-sets", default="0,1", help="held-out sets (that of runtime.seed=j), e.g. 0,1")
    bench.add_argument("--minutes", type=float, default=5.0, help="training time per run, evaluation excluded")
    bench.add_argument("--eval-every", type=int, default=25, help="iterations between held-out evaluations")
    bench.add_argument("--max-iterations", type=int, default=None, help="also stop a run after this many iterations")
    bench.add_argument("--out", default="learning", help="folder of learning.json, learning.png and the runs")
    bench.add_argument("overrides", nargs="*", metavar="key=value", help="for every run, e.g. data.held_out=16")
    bench.set_defaults(func=cmd_bench_learning)
    env = sub.add_parser("env", help="print versions, devices, Triton mode and attention backends")
    env.set_defaults(func=cmd_env)
    _add_data_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may stand before, between or after the options (argparse's positional list ends at the
    # first option, and parse_intermixed_args does not support sub-commands)
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return int(args.func(args))


def console() -> int:
    """The ``fastgrpo`` command: :func:`main`, then SIGINT is ignored while the interpreter exits, so that a late
    Ctrl-C cannot print a traceback from an exit handler (a library's clean-up) after the command has finished."""
    import signal

    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code


if __name__ == "__main__":
    sys.exit(console())
