"""Reward benchmarks: the judge client against a local server with a set latency, and the CLIP reward's throughput.

- ``judge/c{1,8,32}``: :class:`~fastgrpo.rewards.MLLMJudge` scoring a batch against a chat-completions server that
  answers every request after ``LATENCY_S`` (a stand-in for a vLLM/SGLang judge whose GPU time is fixed). The
  server runs in its own process on 127.0.0.1, so the client's figures do not pay for its Python. Recorded:
  ``requests_per_s`` = requests / median wall, and ``overhead_per_request_s`` = median wall · concurrency /
  requests - latency: what each request costs beyond the server's latency (image encoding, JSON, HTTP, threads);
  at concurrency 1 it is wall / requests - latency.
- ``clip/{nomask,mask}/B64``: :class:`~fastgrpo.rewards.ClipReward` on a batch of 64 edits (8 groups of 8 sharing
  a source), edited images as a float tensor on the device (what a VAE decode gives), sources as uint8 arrays.
  ``full`` preset (CUDA): a ViT-B-16-sized open_clip model (random weights: speed does not depend on them) in bf16,
  512x512 images. ``small`` (CPU): a tiny model at 64x64 in float32. Recorded: ``images_per_s`` = 64 / median.

Nothing is asserted about speed. Figures go to pytest-benchmark's ``extra_info`` and the session summary.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from measure import BenchSettings, timing_of_benchmark

LATENCY_S = 0.02
CONCURRENCY = (1, 8, 32)
CLIP_BATCH = 64
GROUP = 8

# A chat-completions server answering every POST with valid scores after LATENCY_S; prints its port, then serves
# until its stdin closes (so it cannot outlive the benchmark session).
_SERVER = textwrap.dedent(
    """
    import json, sys, threading, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    latency = float(sys.argv[1])
    text = json.dumps({"instruction_following": 80, "edit_quality": 70, "preservation": 90})
    body = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})
    payload = body.encode()
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # as production servers do; else headers and body wait on delayed ACKs
        def log_message(self, *args):
            pass
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            time.sleep(latency)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128
    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()
    """
)


@pytest.fixture(scope="module")
def latency_server() -> Iterator[str]:
    """Base URL of the latency server process (stopped, and killed if need be, after the module)."""
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(LATENCY_S)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(process.stdout.readline())  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.stdin.close()  # type: ignore[union-attr]
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _record(benchmark, result_store, bench_facts, key: str, info: dict[str, object]) -> None:
    benchmark.extra_info.update(bench_facts)
    benchmark.extra_info.update(info)
    timing = timing_of_benchmark(benchmark)
    if timing is not None:
        benchmark.extra_info.update(median_s=timing.median_s, p20_s=timing.p20_s, p80_s=timing.p80_s)
    result_store.add(key, "reward", benchmark.extra_info)


@pytest.mark.parametrize("concurrency", CONCURRENCY, ids=[f"c{c}" for c in CONCURRENCY])
def test_judge_throughput(benchmark, concurrency, latency_server, result_store, bench_facts) -> None:
    pytest.importorskip("httpx")
    pytest.importorskip("PIL")
    from fastgrpo.rewards import HttpPolicy, JudgeConfig, JudgeEndpoint, MLLMJudge, RewardBatch

    requests = 16 if concurrency == 1 else 4 * concurrency  # at least 4 full rounds of requests in flight
    endpoint = JudgeEndpoint(latency_server, "bench", max_concurrency=concurrency, trust_env=False)
    policy = HttpPolicy(timeout_s=10.0, max_retries=0, deadline_s=60.0)
    rng = np.random.default_rng(0)
    sources = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)] * requests
    edited = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(requests)]
    batch = RewardBatch.build(sources, edited, [f"edit {i}" for i in range(requests)])
    with MLLMJudge(JudgeConfig(endpoints=(endpoint,), http=policy)) as judge:
        judge.evaluate(batch)  # warm-up: threads started, connections open
        benchmark.group = f"reward/judge/c{concurrency}"
        result = benchmark(judge.evaluate, batch)
        failed = judge.stats().failed
    info: dict[str, object] = {
        "requests": requests,
        "concurrency": concurrency,
        "latency_s": LATENCY_S,
        "image_side": 32,
        "failed": failed,
        "scored": int(torch.isfinite(result.score).sum()),
    }
    timing = timing_of_benchmark(benchmark)
    if timing is not None:
        info["requests_per_s"] = requests / timing.median_s
        info["overhead_per_request_s"] = timing.median_s * concurrency / requests - LATENCY_S
    _record(benchmark, result_store, bench_facts, f"reward/judge/c{concurrency}", info)


def _clip_reward(settings: BenchSettings):
    open_clip = pytest.importorskip("open_clip")
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from fastgrpo.rewards import ClipReward, ClipRewardConfig

    torch.manual_seed(0)
    if settings.size == "full":
        name, image_size, precision = "ViT-B-16", 224, "bf16"
        model = open_clip.create_model(name, pretrained=None)
        tokenizer = open_clip.get_tokenizer(name)
        input_side = 512
    else:
        name, image_size, precision, input_side = "tiny-vit", 64, "fp32", 64
        vision = CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=8, image_size=image_size)
        text = CLIPTextCfg(context_length=32, vocab_size=49408, width=64, heads=2, layers=2)
        model = CLIP(32, vision, text)
        tokenizer = open_clip.SimpleTokenizer(context_length=32)
    config = ClipRewardConfig(device=settings.device, precision=precision, batch_size=CLIP_BATCH)
    reward = ClipReward.from_model(model, tokenizer, config, image_size=image_size)
    return reward, {"model": name, "precision": precision, "image_size": image_size, "input_side": input_side}


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_clip_images_per_second(benchmark, masked, bench_settings, result_store, bench_facts) -> None:
    from fastgrpo.rewards import RewardBatch

    reward, info = _clip_reward(bench_settings)
    side = int(info["input_side"])
    rng = np.random.default_rng(0)
    group_sources = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(CLIP_BATCH // GROUP)]
    sources = [group_sources[i // GROUP] for i in range(CLIP_BATCH)]
    edited = torch.rand(CLIP_BATCH, 3, side, side, device=reward.device)
    mask = np.zeros((side, side), dtype=bool)
    mask[side // 4 : side // 2, side // 4 : 3 * side // 4] = True
    masks = [mask] * CLIP_BATCH if masked else None
    instructions = [f"make object {i // GROUP} red" for i in range(CLIP_BATCH)]
    batch = RewardBatch.build(sources, edited, instructions, masks=masks)
    reward.evaluate(batch)  # warm-up (allocator, kernels)
    benchmark.group = f"reward/clip/{'mask' if masked else 'nomask'}/B{CLIP_BATCH}"
    started = time.perf_counter()
    benchmark(reward.evaluate, batch)
    info.update(batch=CLIP_BATCH, group=GROUP, masked=masked, wall_all_rounds_s=time.perf_counter() - started)
    # Encoder images per sample: edited, plus (masked) edited with the mask painted, plus a source per group.
    info["encodes_per_sample"] = (2 if masked else 1) + 1 / GROUP
    timing = timing_of_benchmark(benchmark)
    if timing is not None:
        info["images_per_s"] = CLIP_BATCH / timing.median_s
    if reward.device.type == "cuda":
        info["peak_mem_bytes"] = torch.cuda.max_memory_allocated(reward.device)
    _record(benchmark, result_store, bench_facts, f"reward/clip/{'mask' if masked else 'nomask'}/B{CLIP_BATCH}", info)
