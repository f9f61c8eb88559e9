"""The run's PNGs: the group grid (layout, pixels, input checks) and the reward curve (series, gaps, empty case,
atomic writes)."""

from __future__ import annotations

import errno
import io
import math
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from fastgrpo.train.metrics import plots
from fastgrpo.train.metrics.drawing import BEST_FRAME
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
        assert (frame == BEST_FRAME) == (i == 1), (i, frame)
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
    assert not np.any(np.all(grid == BEST_FRAME, axis=-1))  # all rewards NaN: no best edit


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


# --- reward curve -----------------------------------------------------------------------------------------------------


def _curve_rows(steps: int = 60) -> list[dict]:
    rows: list[dict] = []
    for step in range(1, steps + 1):
        rows.append({"step": step, "reward_mean": 0.3 + 0.005 * step + 0.02 * math.sin(step)})
        if step % 10 == 0:
            rows.append({"step": step, "eval_reward_mean": 0.35 + 0.004 * step})
    return rows


def _pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == plots._CURVE_SIZE == (800, 500)
        return np.asarray(img.convert("RGB"))


def _render(rows, title: str = "reward"):
    """The figure save_reward_curve would write, rendered, and its ``[500, 800, 3]`` pixels."""
    fig = plots._reward_figure(rows, title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    buffer.seek(0)
    return fig, _pixels(buffer)


def _near(arr: np.ndarray, colour: str, tol: int = 12) -> np.ndarray:
    """Mask of the pixels within ``tol`` of ``colour`` in every channel (lines are antialiased)."""
    rgb = np.round(np.array(to_rgb(colour)) * 255)
    return np.all(np.abs(arr.astype(np.int64) - rgb) <= tol, axis=-1)


def _pixel_at(fig, arr: np.ndarray, x: float, y: float) -> np.ndarray:
    """The 5x5 pixels around the data point ``(x, y)`` of the figure's axes."""
    px, py = fig.axes[0].transData.transform((x, y))
    col, row = round(px), round(arr.shape[0] - py)
    return arr[row - 2 : row + 3, col - 2 : col + 3]


def _legend(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_reward_curve_train_and_eval_with_gaps(tmp_path):
    rows = _curve_rows()
    noise = [
        {"step": 61, "reward_mean": float("nan")},
        {"step": 62, "reward_mean": None},
        {"step": 63},
        {"reward_mean": 0.5},
        {"step": float("inf"), "reward_mean": 0.5},
        {"step": 64, "eval_reward_mean": "n/a"},
        {"step": 65, "reward_mean": True},
        "not a row",
    ]
    out = save_reward_curve(tmp_path / "plots" / "reward.png", rows[::-1] + noise, title="demo run")
    assert out == tmp_path / "plots" / "reward.png"
    assert [p.name for p in out.parent.iterdir()] == ["reward.png"]  # no temporary file left behind
    arr = _pixels(out)
    assert _near(arr, plots._TRAIN).sum() > 300  # the legend swatch alone is well under 100 pixels
    assert _near(arr, plots._TRAIN_AVG).sum() > 1000
    assert _near(arr, plots._EVAL).sum() > 800

    # the skipped rows (and the order) change nothing: the image is the one of the clean rows
    fig, clean = _render(rows, "demo run")
    np.testing.assert_array_equal(arr, clean)
    ax = fig.axes[0]
    assert fig.get_suptitle() == "demo run" and ax.get_xlabel() == "step"
    assert _legend(fig) == ["train reward", "train, moving average of 6", "eval reward"]
    train, avg, evals = ax.get_lines()
    np.testing.assert_array_equal(train.get_xdata(), np.arange(1, 61))
    np.testing.assert_array_equal(evals.get_xdata(), np.arange(10, 61, 10))
    np.testing.assert_allclose(
        avg.get_ydata()[-1], np.mean([r["reward_mean"] for r in rows if "reward_mean" in r][-6:])
    )
    assert all(float(t).is_integer() for t in ax.get_xticks())
    # every evaluation point is drawn where it belongs
    for row in rows:
        if "eval_reward_mean" in row:
            assert _near(_pixel_at(fig, clean, row["step"], row["eval_reward_mean"]), plots._EVAL).any(), row


@pytest.mark.parametrize(
    "poison",
    [
        lambda rows: rows[5].update(reward_mean=0.9),  # one training reward
        lambda rows: rows[5].update(reward_mean=float("nan")),  # one training reward dropped
        lambda rows: rows[-1].update(eval_reward_mean=0.2),  # the last evaluation
        lambda rows: rows.append({"step": 70, "eval_reward_mean": 0.5}),  # one evaluation more
    ],
)
def test_reward_curve_changes_with_the_metrics(poison):
    _, base = _render(_curve_rows())
    _, again = _render(_curve_rows())
    np.testing.assert_array_equal(base, again)  # deterministic, so a difference below comes from the data
    rows = _curve_rows()
    poison(rows)
    _, changed = _render(rows)
    assert not np.array_equal(base, changed)


def test_reward_curve_eval_only_and_single_point(tmp_path):
    rows = [{"step": s, "eval_reward_mean": v} for s, v in [(0, 0.2), (50, 0.4), (100, 0.45)]]
    arr = _pixels(save_reward_curve(tmp_path / "eval.png", rows))
    assert _near(arr, plots._EVAL).sum() > 300
    assert not _near(arr, plots._TRAIN).any() and not _near(arr, plots._TRAIN_AVG).any()
    fig, rendered = _render(rows)
    np.testing.assert_array_equal(arr, rendered)
    assert _legend(fig) == ["eval reward"]

    fig, arr = _render([{"step": 3, "reward_mean": 0.7}, {"step": 4, "reward_mean": float("nan")}])
    assert _legend(fig) == ["train reward"]
    assert fig.axes[0].get_xlim() == (2.0, 4.0)  # whole steps around the lone step, not 2.96 ... 3.04
    assert _near(_pixel_at(fig, arr, 3, 0.7), plots._TRAIN).any()  # the lone point is a visible marker


def test_reward_curve_empty_says_no_data(tmp_path):
    for rows in ([], [{"step": 1}, {"step": 2, "reward_mean": float("nan")}, {"step": None, "reward_mean": 1.0}]):
        arr = _pixels(save_reward_curve(tmp_path / "empty.png", rows, title="waiting"))
        for colour in (plots._TRAIN, plots._TRAIN_AVG, plots._EVAL):
            assert not _near(arr, colour).any()
        assert np.any(arr != 255)  # the title and "no data yet"
        fig, rendered = _render(rows, "waiting")
        np.testing.assert_array_equal(arr, rendered)
        assert fig.axes == [] and fig.get_suptitle() == "waiting"
        assert [t.get_text() for t in fig.texts] == ["waiting", "no data yet"]  # the title, then the note


def test_reward_curve_title_is_shortened_and_shown_as_written():
    fig, _ = _render(_curve_rows(), "reward - " + "very-long-run-name-" * 30)
    (heading,) = [t for t in fig.texts if t.get_text() == fig.get_suptitle()]
    assert heading.get_text().endswith("...")
    assert heading.get_window_extent(fig.canvas.get_renderer()).width <= plots._CURVE_SIZE[0] - 20
    fig, _ = _render(_curve_rows(), "cost $5 to $6\nrun")  # unescaped, "5 to 6" would be set as mathtext
    assert fig.get_suptitle() == r"cost \$5 to \$6 run"


def test_reward_curve_failed_write_keeps_the_previous_png(tmp_path, monkeypatch):
    from fastgrpo.train.storage import files

    path = save_reward_curve(tmp_path / "reward.png", _curve_rows(30))
    before = path.read_bytes()

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "replace", no_space)
    with pytest.raises(OSError, match="No space"):
        save_reward_curve(path, _curve_rows(60))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["reward.png"]  # the temporary file was removed
    monkeypatch.undo()
    save_reward_curve(path, _curve_rows(60))
    assert path.read_bytes() != before


def test_reward_curve_imports_matplotlib_late_and_never_pyplot():
    code = (
        "import io, sys\n"
        "from fastgrpo.train.metrics import plots\n"
        "assert 'matplotlib' not in sys.modules, 'importing plots imported matplotlib'\n"
        "plots._reward_figure([{'step': 1, 'reward_mean': 0.5}], 'x').savefig(io.BytesIO(), format='png')\n"
        "assert 'matplotlib' in sys.modules\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_moving_average():
    np.testing.assert_array_equal(plots._moving_average(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])
    values = np.random.default_rng(0).normal(size=50)
    expected = [values[max(0, i - 6) : i + 1].mean() for i in range(50)]
    np.testing.assert_allclose(plots._moving_average(values, 7), expected, rtol=1e-12, atol=1e-12)
