"""``load_records`` on 100,000 GEdit-Bench-like rows: parquet folder vs the same rows as a ``save_to_disk`` folder.

Run from the repository root::

    .venv/bin/python benchmarks/data_load_100k.py --out out/data_load_100k.json

The data (written to a temporary folder, removed afterwards unless ``--keep DIR``): GEdit-Bench's columns
``task_type``, ``key``, ``instruction``, ``instruction_language``, ``input_image``, ``input_image_raw``,
``Intersection_exist``, with both image columns embedded as Hugging Face image structs (``{"bytes", "path"}``).
Each image is a 32x32 PNG (``--image-size``) of a colour gradient whose first pixel encodes its index, so every
image differs (``--distinct N`` encodes only N and reuses them cyclically; parquet's dictionary encoding then
shrinks the files while the dictionary stays under its 1 MiB page limit, Arrow does not); ``input_image_raw`` of row
i is ``input_image`` of row i + 1. A gradient compresses to almost nothing (a 256x256 one is about 0.8 KB);
``--pixels noise`` fills the images with seeded random pixels instead, which PNG cannot compress (3 bytes per pixel:
a 64x64 image is about 12 KB), so that the files have the sizes of photographs. The set is written once as
``data/train-0000k-of-00004.parquet`` (the hub's parquet layout) and once as a ``DatasetDict`` ``save_to_disk``
folder with four Arrow shards. With ``--keep DIR`` the data stays in DIR, and a later run with the same
``--keep DIR`` and data options reads it again instead of writing it (``data.json`` there records the options).

Every measurement runs in a fresh Python process, which imports what its path needs, records its peak resident
set so far (``baseline``), calls ``load_records`` and reports the wall time of that call and the peak resident set
afterwards: ``VmHWM`` of ``/proc/self/status`` (KiB), else ``ru_maxrss``; and the growth of ``RssAnon`` over the
call (``anon +MiB``: resident memory not mapped from files, with the records still held; the peak also counts the
pages of the memory-mapped Arrow files that were touched, which the kernel can drop). (On Linux ``ru_maxrss`` of a child
process can be its parent's peak: the child shares the parent's memory until it starts Python, and this script's
own peak, while it writes the data, is far above a child's.) ``--repeat`` processes per case; the table shows the
median time and the largest peak. The ``image MiB`` column is the total size of the image bytes the records hold
(only ``input_image`` is read; ``input_image_raw`` is never converted); ``lazy`` counts the records whose image is a
reference into the memory-mapped Arrow data instead (read when decoded).

Nothing is asserted; the JSON (``--out``) records every run, the data sizes and the machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
def status_kib(key):
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(key + ":"))
    except (OSError, StopIteration):
        return None
def peak_kib():
    return status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
case, path = sys.argv[1], sys.argv[2]
if case == "parquet":
    import pyarrow.parquet  # noqa: F401
else:
    import datasets  # noqa: F401
from fastgrpo.data.loaders import load_records
baseline, baseline_anon = peak_kib(), status_kib("RssAnon")
start = time.perf_counter()
loaded = load_records(path)
seconds = time.perf_counter() - start
peak, anon = peak_kib(), status_kib("RssAnon")
image_bytes = sum(len(r.source) for r in loaded.records if isinstance(r.source, bytes))
lazy = sum(type(r.source).__name__ == "ArrowImage" for r in loaded.records)
print(json.dumps({
    "seconds": seconds, "baseline_kib": baseline, "peak_kib": peak, "baseline_anon_kib": baseline_anon,
    "anon_kib": anon, "records": len(loaded.records), "problems": len(loaded.problems), "image_bytes": image_bytes,
    "lazy_images": lazy, "presets": sorted(set(loaded.presets.values())),
}))
"""


def pngs(count: int, size: int, pixels_kind: str = "gradient") -> list[bytes]:
    """``count`` different ``size`` x ``size`` RGB images as PNG files (the first pixel encodes the index): colour
    gradients, or (``"noise"``) seeded random pixels that PNG cannot compress."""
    import io

    from PIL import Image

    ramp = np.linspace(0, 255, size, dtype=np.float32)
    rng = np.random.default_rng(0)
    images = []
    for i in range(count):
        if pixels_kind == "noise":
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        else:
            r = (ramp[None, :] + 7 * i) % 256
            g = (ramp[:, None] + 13 * i) % 256
            b = np.full((size, size), (31 * i) % 256, np.float32)
            pixels = np.stack(np.broadcast_arrays(r, g, b), axis=-1).astype(np.uint8)
        pixels[0, 0] = (i & 255, (i >> 8) & 255, (i >> 16) & 255)  # every image different
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "PNG")
        images.append(buf.getvalue())
    return images


def write_data(
    root: Path, rows: int, size: int, distinct: int, pixels_kind: str = "gradient", shards: int = 4
) -> dict[str, Path]:
    """The parquet folder and the ``save_to_disk`` folder of the same rows."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = pngs(distinct, size, pixels_kind)
    features = datasets.Features(
        {
            "task_type": datasets.Value("string"),
            "key": datasets.Value("string"),
            "instruction": datasets.Value("string"),
            "instruction_language": datasets.Value("string"),
            "input_image": datasets.Image(),
            "input_image_raw": datasets.Image(),
            "Intersection_exist": datasets.Value("bool"),
        }
    )
    parquet, saved = root / "parquet", root / "save_to_disk"
    (parquet / "data").mkdir(parents=True)
    bounds = np.linspace(0, rows, shards + 1, dtype=np.int64)
    tables = []
    for shard, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        index = range(int(lo), int(hi))
        table = pa.table(
            {
                "task_type": [("color_alter", "subject-add", "style_change")[i % 3] for i in index],
                "key": [f"{i:08x}" for i in index],
                "instruction": [f"make object {i % 97} red" for i in index],
                "instruction_language": ["en" if i % 2 == 0 else "cn" for i in index],
                "input_image": [{"bytes": images[i % distinct], "path": None} for i in index],
                "input_image_raw": [{"bytes": images[(i + 1) % distinct], "path": None} for i in index],
                "Intersection_exist": [i % 5 != 0 for i in index],
            },
            schema=features.arrow_schema,
        )
        pq.write_table(table, parquet / "data" / f"train-{shard:05d}-of-{shards:05d}.parquet")
        tables.append(table)
    dataset = datasets.Dataset(pa.concat_tables(tables), info=datasets.DatasetInfo(features=features))
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(saved), num_shards={"train": shards})
    return {"parquet": parquet, "save_to_disk": saved}


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(case: str, path: Path) -> dict:
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, case, str(path)], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"the {case} run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows to generate (default 100000)")
    parser.add_argument("--image-size", type=int, default=32, help="side of each embedded PNG, pixels (default 32)")
    parser.add_argument(
        "--distinct", type=int, default=None, help="different images, reused cyclically (default: one per row)"
    )
    parser.add_argument(
        "--pixels", choices=("gradient", "noise"), default="gradient", help="image content (default gradient)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per case (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON results here")
    parser.add_argument(
        "--keep", type=Path, default=None, help="write the data here and keep it (reused when it is already there)"
    )
    args = parser.parse_args(argv)
    args.distinct = args.distinct or args.rows
    if args.rows < 1 or args.repeat < 1 or args.distinct < 1 or args.image_size < 1:
        parser.error("--rows, --repeat, --distinct and --image-size must be positive")

    root = args.keep or Path(tempfile.mkdtemp(prefix="fastgrpo-load-100k-"))
    options = {"rows": args.rows, "image_size": args.image_size, "distinct": args.distinct, "pixels": args.pixels}
    try:
        started = time.perf_counter()
        paths = {"parquet": root / "parquet", "save_to_disk": root / "save_to_disk"}
        marker = root / "data.json"
        if not (marker.is_file() and json.loads(marker.read_text()) == options):
            if args.keep is not None and any(root.iterdir() if root.is_dir() else ()):
                if marker.is_file():
                    raise SystemExit(f"{root} holds data written with other options ({marker.read_text()}); "
                                     "pass another --keep folder")  # fmt: skip
                raise SystemExit(f"{root} is not empty and holds no benchmark data; pass an empty --keep folder")
            paths = write_data(root, args.rows, args.image_size, args.distinct, args.pixels)
            marker.write_text(json.dumps(options) + "\n")
        generate_s = time.perf_counter() - started
        results = {}
        for case, path in paths.items():
            runs = [measure(case, path) for _ in range(args.repeat)]
            results[case] = {"path_bytes": folder_bytes(path), "runs": runs}
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)

    print(f"{args.rows} rows, {args.image_size}x{args.image_size} {args.pixels} PNGs ({args.distinct} distinct), "
          f"data ready in {generate_s:.1f} s; median of {args.repeat} fresh processes")  # fmt: skip
    header = f"{'case':<14}{'on disk MiB':>12}{'load s':>9}{'baseline MiB':>14}{'peak MiB':>10}{'records':>9}"
    print(header + f"{'anon +MiB':>11}{'image MiB':>11}{'lazy':>9}")
    for case, result in results.items():
        runs = result["runs"]
        seconds = statistics.median(r["seconds"] for r in runs)
        base = max(r["baseline_kib"] for r in runs) / 1024
        peak = max(r["peak_kib"] for r in runs) / 1024
        anon = max((r["anon_kib"] or 0) - (r["baseline_anon_kib"] or 0) for r in runs) / 1024
        print(
            f"{case:<14}{result['path_bytes'] / 2**20:>12.1f}{seconds:>9.2f}{base:>14.0f}{peak:>10.0f}"
            f"{runs[0]['records']:>9}{anon:>11.0f}{runs[0]['image_bytes'] / 2**20:>11.1f}{runs[0]['lazy_images']:>9}"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "rows": args.rows,
            "image_size": args.image_size,
            "distinct_images": args.distinct,
            "pixels": args.pixels,
            "repeat": args.repeat,
            "generate_s": generate_s,
            "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
            "results": results,
        }
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
