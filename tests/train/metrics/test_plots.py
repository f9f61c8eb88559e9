"""The run's PNGs: the group grid (layout, pixels, input checks) and the reward curve (series, gaps, empty case)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from fastgrpo.train.metrics import plots
from fastgrpo.train.metrics.plots import group_grid_size, save_group_grid, save_reward_curve

H, W, G, SCALE = 32, 24, 4, 4


def _images(seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    source = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    edits = [rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8) for _ in range(G)]
    return source, edits


def _expected_size(num_edits: int, per_row: int, rows: int) -> tuple[int, int]:
    cell_w = W * SCALE + 2 * plots._BORDER
    cell_h = H * SCALE + 2 * plots._BORDER + plots._CAPTION_H
    width = plots._PAD + (1 + per_row) * (cell_w + plots._PAD)
    height = plots._PAD + plots._HEADER_H + rows * (cell_h + plots._PAD)
    return width, height


def test_group_grid_layout_and_source_pixels(tmp_path):
    source, edits = _images()
    out = save_group_grid(
        tmp_path / "new" / "dir" / "grid.png", source, edits, [0.1, 0.9, float("nan"), 0.5], "make it blue"
    )
    assert out == tmp_path / "new" / "dir" / "grid.png"
    assert [p.name for p in out.parent.iterdir()] == ["grid.png"]  # no temporary file left behind
    with Image.open(out) as img:
        assert img.format == "PNG"
        grid = np.asarray(img.convert("RGB"))
    assert (grid.shape[1], grid.shape[0]) == _expected_size(G, G, 1) == group_grid_size(H, W, G, scale=SCALE)

    up = np.repeat(np.repeat(source, SCALE, axis=0), SCALE, axis=1)
    x0 = plots._PAD + plots._BORDER
    y0 = plots._PAD + plots._HEADER_H + plots._BORDER
    np.testing.assert_array_equal(grid[y0 : y0 + H * SCALE, x0 : x0 + W * SCALE], up)

    # the best edit (index 1, reward 0.9) is framed in the highlight colour, the others are not
    cell_w = W * SCALE + 2 * plots._BORDER + plots._PAD
    for i in range(G):
        frame_x = plots._PAD + (1 + i) * cell_w
        frame = tuple(int(c) for c in grid[y0 - 1, frame_x])
        assert (frame == plots._BEST_FRAME) == (i == 1), (i, frame)
    # the third edit's tile holds its pixels too
    x2 = plots._PAD + 3 * cell_w + plots._BORDER
    np.testing.assert_array_equal(
        grid[y0 : y0 + H * SCALE, x2 : x2 + W * SCALE], np.repeat(np.repeat(edits[2], SCALE, 0), SCALE, 1)
    )


def test_group_grid_wraps_columns_and_accepts_floats(tmp_path):
    source, edits = _images(1)
    floats = [e.astype(np.float32) / 255.0 for e in edits]
    long_instruction = "replace the background with a very detailed mountain landscape at sunset " * 5
    out = save_group_grid(
        tmp_path / "g.png", source.astype(np.float64) / 255.0, floats, [math.nan] * G, long_instruction, columns=3
    )
    with Image.open(out) as img:
        grid = np.asarray(img.convert("RGB"))
    assert (grid.shape[1], grid.shape[0]) == _expected_size(G, 3, 2)
    up = np.repeat(np.repeat(source, SCALE, axis=0), SCALE, axis=1)
    x0 = plots._PAD + plots._BORDER
    y0 = plots._PAD + plots._HEADER_H + plots._BORDER
    np.testing.assert_array_equal(grid[y0 : y0 + H * SCALE, x0 : x0 + W * SCALE], up)  # exact float round trip
    assert not np.any(np.all(grid == plots._BEST_FRAME, axis=-1))  # all rewards NaN: no best edit


def test_group_grid_tiny_images_scale_one(tmp_path):
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    out = save_group_grid(tmp_path / "t.png", img, [img, img], [1.0, -1.0], "x", scale=1)
    with Image.open(out) as im:
        assert im.size == group_grid_size(8, 8, 2, scale=1)


@pytest.mark.parametrize(
    ("source", "edits", "rewards", "kwargs", "match"),
    [
        (np.zeros((32, 32), np.uint8), [np.zeros((32, 32), np.uint8)], [0.0], {}, r"\[H, W, 3\].*\(32, 32\)"),
        (np.zeros((32, 32, 3), np.uint8), [np.zeros((16, 16, 3), np.uint8)], [0.0], {}, "resize the edits"),
        (np.zeros((32, 32, 3), np.uint8), [np.zeros((32, 32, 4), np.uint8)], [0.0], {}, r"edits\[0\].*\[H, W, 3\]"),
        (np.zeros((32, 32, 3), np.uint8), [np.zeros((32, 32, 3), np.uint8)], [0.0, 1.0], {}, "one reward per edit"),
        (np.zeros((32, 32, 3), np.uint8), [], [], {}, "G >= 1"),
        (np.zeros((32, 32, 3), np.uint8), [np.zeros((32, 32, 3), np.uint8)], [0.0], {"scale": 0}, "scale"),
        (np.zeros((32, 32, 3), np.uint8), [np.zeros((32, 32, 3), np.uint8)], [0.0], {"columns": 0}, "columns"),
        (np.full((32, 32, 3), 300, np.int64), [np.zeros((32, 32, 3), np.uint8)], [0.0], {}, r"\[0, 255\]"),
    ],
)
def test_group_grid_rejects_bad_input(tmp_path, source, edits, rewards, kwargs, match):
    with pytest.raises(ValueError, match=match):
        save_group_grid(tmp_path / "bad.png", source, edits, rewards, "x", **kwargs)
    assert not list(tmp_path.iterdir())


def _pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.size == plots._CURVE_SIZE
        return np.asarray(img.convert("RGB"))


def _count(arr: np.ndarray, colour) -> int:
    return int(np.all(arr == np.array(colour, dtype=np.uint8), axis=-1).sum())


def _plot_area(arr: np.ndarray) -> np.ndarray:
    w, h = plots._CURVE_SIZE
    return arr[plots._MARGIN_TOP + 1 : h - plots._MARGIN_BOTTOM, plots._MARGIN_LEFT + 1 : w - plots._MARGIN_RIGHT]


def test_reward_curve_train_and_eval_with_gaps(tmp_path):
    rows: list[dict] = []
    for step in range(1, 61):
        rows.append({"step": step, "reward_mean": 0.3 + 0.005 * step + 0.02 * math.sin(step)})
        if step % 10 == 0:
            rows.append({"step": step, "eval_reward_mean": 0.35 + 0.004 * step})
    rows += [
        {"step": 61, "reward_mean": float("nan")},
        {"step": 62, "reward_mean": None},
        {"step": 63},
        {"reward_mean": 0.5},
        {"step": float("inf"), "reward_mean": 0.5},
        {"step": 64, "eval_reward_mean": "n/a"},
    ]
    out = save_reward_curve(tmp_path / "plots" / "reward.png", rows, title="demo run")
    arr = _pixels(out)
    area = _plot_area(arr)
    assert np.any(area != np.array(plots._BACKGROUND, dtype=np.uint8))
    assert _count(area, plots._TRAIN) > 50
    assert _count(area, plots._TRAIN_AVG) > 100
    assert _count(area, plots._EVAL) > 50
    assert [p.name for p in out.parent.iterdir()] == ["reward.png"]


def test_reward_curve_eval_only_and_single_point(tmp_path):
    rows = [{"step": s, "eval_reward_mean": v} for s, v in [(0, 0.2), (50, 0.4), (100, 0.45)]]
    area = _plot_area(_pixels(save_reward_curve(tmp_path / "eval.png", rows)))
    assert _count(area, plots._EVAL) > 50
    assert _count(area, plots._TRAIN) == 0
    area = _plot_area(_pixels(save_reward_curve(tmp_path / "one.png", [{"step": 3, "reward_mean": 0.7}])))
    assert _count(area, plots._TRAIN) > 0


def test_reward_curve_empty_says_no_data(tmp_path):
    for rows in ([], [{"step": 1}, {"step": 2, "reward_mean": float("nan")}]):
        arr = _pixels(save_reward_curve(tmp_path / "empty.png", rows))
        area = _plot_area(arr)
        assert _count(area, plots._TRAIN) == 0 and _count(area, plots._EVAL) == 0
        assert np.any(arr != np.array(plots._BACKGROUND, dtype=np.uint8))  # the title and "no data yet"


def test_tick_helpers():
    lo, hi, ticks = plots._ticks(0.213, 0.687, integer=False)
    assert lo <= 0.213 and hi >= 0.687 and 4 <= len(ticks) <= 8
    assert [plots._tick_label(t, ticks[1] - ticks[0]) for t in ticks][:2] == ["0.2", "0.3"]
    lo, hi, ticks = plots._ticks(5, 5, integer=True)
    assert lo < 5 < hi and all(float(t).is_integer() for t in ticks)
    assert plots._moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
