"""Tiny synthetic data sets written at test time in every supported layout, and every kind of bad image.

Nothing is downloaded: images are a few dozen pixels made with PIL, parquet files are written with pyarrow with
the image columns as Hugging Face image structs (``{"bytes", "path"}``), as the public data sets store them.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    """``uint8 [height, width, 3]`` noise."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encode(image: Image.Image | np.ndarray, fmt: str = "PNG", **kwargs: Any) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png(width: int = 24, height: int = 16, seed: int = 0) -> bytes:
    return encode(rgb(width, height, seed), "PNG")


def jpeg(width: int = 24, height: int = 16, seed: int = 0, **kwargs: Any) -> bytes:
    return encode(rgb(width, height, seed), "JPEG", **kwargs)


def mask_png(width: int = 24, height: int = 16) -> bytes:
    """White (= change) left half on black."""
    levels = np.zeros((height, width), np.uint8)
    levels[:, : width // 2] = 255
    return encode(levels, "PNG")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring ``width x height`` RGB pixels, with almost no data: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def bad_images() -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, expected reason) for every bad image kind."""
    good_jpeg, good_png = jpeg(64, 64, seed=1), png(64, 64, seed=2)
    return {
        "zero.png": (b"", "empty_file"),
        "truncated.jpg": (good_jpeg[: len(good_jpeg) // 2], "truncated_image"),
        "truncated.png": (good_png[: len(good_png) // 2], "truncated_image"),
        "garbage.png": (b"this is not an image at all" * 8, "corrupt_image"),
        "bomb.png": (bomb_png(), "decompression_bomb"),
        "cmyk.jpg": (encode(Image.new("CMYK", (8, 8)), "JPEG"), "unsupported_mode"),
        "sixteen.png": (encode(Image.new("I;16", (8, 8)), "PNG"), "unsupported_mode"),
        "float.tif": (encode(Image.new("F", (8, 8)), "TIFF"), "unsupported_mode"),
    }


def hf_image(data: bytes, name: str = "image.png") -> dict[str, Any]:
    """The Hugging Face ``datasets`` image struct as stored in parquet."""
    return {"bytes": data, "path": name}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


# --- one small data set per public layout --------------------------------------------------------------------


def magicbrush(root: Path, mask_size: tuple[int, int] = (24, 16)) -> Path:
    """MagicBrush's parquet; ``mask_size`` other than the images' 24x16 makes masks of another size than their
    image, as some of MagicBrush's are (MagicBrush repository issue #10)."""
    rows = [
        {
            "img_id": "327726",
            "turn_index": turn,
            "source_img": hf_image(png(24, 16, seed=turn), "327726-input.png"),
            "mask_img": hf_image(mask_png(*mask_size), "327726-mask.png"),
            "instruction": f"put a hat on the dog, turn {turn}",
            "target_img": hf_image(png(24, 16, seed=10 + turn), "327726-output.png"),
        }
        for turn in (1, 2)
    ]
    return write_parquet(root / "data" / "train-00000-of-00001.parquet", rows)


def emu_edit(root: Path) -> Path:
    rows = [
        {
            "idx": i,
            "task": "background",
            "split": "test",
            "image": hf_image(jpeg(32, 24, seed=i)),
            "instruction": "make the sky pink",
            "input_caption": "a lake under a blue sky",
            "output_caption": "a lake under a pink sky",
            "hash": f"h{i}",
        }
        for i in range(3)
    ]
    return write_parquet(root / "test.parquet", rows)


def gedit_bench(root: Path) -> Path:
    rows = [
        {
            "task_type": "color_alter",
            "key": f"k{i}",
            "instruction": "把杯子变成红色" if lang == "cn" else "make the cup red",
            "instruction_language": lang,
            "input_image": hf_image(png(16, 16, seed=i)),
            "input_image_raw": hf_image(png(40, 40, seed=100 + i)),
            "Intersection_exist": True,
        }
        for i, lang in enumerate(["en", "cn", "en"])
    ]
    return write_parquet(root / "gedit.parquet", rows)


def instructpix2pix(root: Path) -> Path:
    rows = [
        {
            "original_prompt": "a photo of a cat",
            "input_image": hf_image(png(16, 16, seed=i)),
            "edit_prompt": "turn it into a tiger",
            "edited_prompt": "a photo of a tiger",
            "edited_image": hf_image(png(16, 16, seed=50 + i)),
        }
        for i in range(2)
    ]
    return write_parquet(root / "ip2p.parquet", rows)


def imgedit_jsonl(root: Path) -> Path:
    write_files(root, {"animal/000342021.jpg": jpeg(20, 20), "style/000001.png": png(20, 20)})
    rows = [
        {"key": "1082", "path": "animal/000342021.jpg", "prompt": "change the cat to blue", "edit_type": "adjust"},
        {"key": "2001", "path": "style/000001.png", "prompt": "make it a watercolour", "edit_type": "style"},
    ]
    return write_jsonl(root / "imgedit.jsonl", rows)


def imgedit_json(root: Path) -> Path:
    write_files(root, {"animal/000342021.jpg": jpeg(20, 20)})
    data = {"1082": {"id": "animal/000342021.jpg", "prompt": "remove the cat", "edit_type": "remove"}}
    path = root / "basic_edit.json"
    path.write_text(json.dumps(data))
    return path


def flow_grpo(root: Path) -> Path:
    write_files(root, {f"images/{i}.png": png(16, 16, seed=i) for i in range(3)})
    rows = [
        {
            "tag": "counting",
            "include": [{"class": "cat", "count": 2}],
            "exclude": [{"class": "cat", "count": 3}],
            "t2i_prompt": "a photo of three cats",
            "prompt": "remove one cat",
            "image": f"images/{i}.png",
        }
        for i in range(3)
    ]
    return write_jsonl(root / "train_metadata.jsonl", rows)


def native(root: Path, count: int = 4) -> Path:
    """The fastgrpo layout: paths, masks, captions, tasks; sizes alternate square and 3:2 landscape."""
    files, rows = {}, []
    for i in range(count):
        w, h = (24, 16) if i % 2 else (20, 20)
        files[f"img/{i}.png"] = png(w, h, seed=i)
        files[f"mask/{i}.png"] = mask_png(w, h)
        rows.append(
            {
                "id": f"n{i}",
                "source": f"img/{i}.png",
                "instruction": f"edit number {i}",
                "mask": f"mask/{i}.png",
                "input_caption": "before",
                "output_caption": "after",
                "task": "add" if i % 2 else "remove",
            }
        )
    write_files(root, files)
    return write_jsonl(root / "edits.jsonl", rows)


# --- layouts with several input images, multi-turn rows and side files -----------------------------------------


def flow_grpo_dual_ref(root: Path, count: int = 2) -> Path:
    """Flow-GRPO's ``dataset/dual_ref/test_metadata.jsonl``: control image, referenced image, supervision image."""
    files, rows = {}, []
    for i in range(1, count + 1):
        files[f"input/{i:05d}.png"] = png(24, 16, seed=i)
        files[f"referenced/{i:05d}.png"] = png(20, 20, seed=20 + i)  # another size and aspect than the control
        files[f"supervise/{i:05d}.png"] = png(24, 16, seed=40 + i)
        rows.append(
            {
                "tag": "dual_ref",
                "prompt": "Fix the control image according to the referenced image: replace the logo",
                "ctrl_image": f"input/{i:05d}.png",
                "ref_image": f"referenced/{i:05d}.png",
                "sup_image": f"supervise/{i:05d}.png",
            }
        )
    write_files(root, files)
    return write_jsonl(root / "test_metadata.jsonl", rows)


def counting_edit(root: Path) -> Path:
    """Flow-GRPO's ``counting_edit/`` as its ``process_data.py`` leaves it: ``metadata.jsonl`` (the GenEval counting
    prompts the images were generated from), ``output.jsonl`` (every edit made from them, images under
    ``generated_images/``) and the ``train_``/``test_metadata.jsonl`` splits of those edits."""
    prompts = [("clock", 3, "three"), ("cat", 2, "two")]
    numbers = {1: "one", 2: "two", 3: "three", 4: "four"}
    meta = [
        {"tag": "counting", "include": [{"class": c, "count": n}], "t2i_prompt": f"a photo of {w} {c}s"}
        for c, n, w in prompts
    ]
    edits = [
        {
            "tag": "counting",
            "include": [{"class": c, "count": m}],
            "exclude": [{"class": c, "count": m + 1}],
            "t2i_prompt": f"a photo of {w} {c}s",
            "prompt": f"Change the number of {c} in the image to {numbers[m]}.",
            "image": f"generated_images/image_{i}.jpg",
        }
        for i, (c, n, w) in enumerate(prompts)
        for m in sorted(set(numbers) - {n})
    ]
    write_files(root, {f"generated_images/image_{i}.jpg": jpeg(16, 16, seed=i) for i in range(len(prompts))})
    write_jsonl(root / "metadata.jsonl", meta)
    write_jsonl(root / "output.jsonl", edits)
    write_jsonl(root / "train_metadata.jsonl", edits[:4])
    write_jsonl(root / "test_metadata.jsonl", edits[4:])
    return root


def imgedit_train(root: Path) -> Path:
    """ImgEdit's training layout: ``Parquet/remove_part5.parquet`` (``input_images``/``output_images`` lists of
    paths inside the extracted archives, ``prompt``) and the extracted ``results_remove_laion_part5/`` folder."""
    files, rows = {}, []
    for i in range(3):
        folder = f"results_remove_laion_part5/00094_00030_00030474{i}"
        files[f"{folder}/original.png"] = png(24, 16, seed=i)
        files[f"{folder}/result.png"] = png(24, 16, seed=10 + i)
        rows.append(
            {
                "input_images": [f"{folder}/original.png"],
                "output_images": [f"{folder}/result.png"],
                "prompt": "Remove the group of people snowshoeing in the far-right upper-middle of the image.",
            }
        )
    write_files(root, files)
    return write_parquet(root / "Parquet" / "remove_part5.parquet", rows)


def imgedit_multiturn(root: Path, turns: int = 3) -> Path:
    """ImgEdit's multi-turn layout: ``Parquet/version_backtracking_part0.parquet``, one ``data`` column holding the
    turns (``input_images``, ``output_images``, ``prompt``), images in ``results_version_backtracking_part0/``."""
    files, rows = {}, []
    for r in range(2):
        folder = f"results_version_backtracking_part0/00031_00020_00020965{r}"
        data = []
        for k in range(turns):
            files[f"{folder}/origin_{k}.png"] = png(16, 16, seed=100 * r + k)
            files[f"{folder}/result_{k}.png"] = png(16, 16, seed=100 * r + 50 + k)
            data.append(
                {
                    "input_images": [f"{folder}/origin_{k}.png"],
                    "output_images": [f"{folder}/result_{k}.png"],
                    "prompt": ["add a green vest", "replace the vest with a jacket", "withdraw the last change"][k],
                }
            )
        rows.append({"data": data})
    write_files(root, files)
    return write_parquet(root / "Parquet" / "version_backtracking_part0.parquet", rows)
