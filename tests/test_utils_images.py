"""Image grids, GIFs and atomic writes (diffusionkit.utils)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from diffusionkit import SampleTrajectory
from diffusionkit.utils import (
    FrameRecorder,
    atomic_write_text,
    make_grid,
    save_gif,
    save_grid,
    to_uint8,
    trajectory_frames,
)


def test_make_grid_places_each_image_and_pads():
    images = torch.stack([torch.full((1, 2, 3), v) for v in (-1.0, 0.0, 0.5)])  # (3, 1, 2, 3)
    grid = make_grid(images, nrow=2, padding=1, pad_value=1.0)
    # 2 columns, 2 rows: H = 2 * (2 + 1) + 1, W = 2 * (3 + 1) + 1
    assert grid.shape == (1, 7, 9)
    assert torch.all(grid[:, 1:3, 1:4] == -1.0)  # image 0: row 0, col 0
    assert torch.all(grid[:, 1:3, 5:8] == 0.0)  # image 1: row 0, col 1
    assert torch.all(grid[:, 4:6, 1:4] == 0.5)  # image 2: row 1, col 0
    assert torch.all(grid[:, 4:6, 5:8] == 1.0)  # the empty cell is padding
    assert torch.all(grid[:, 0, :] == 1.0) and torch.all(grid[:, :, 4] == 1.0)


def test_to_uint8_maps_range_and_clamps():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(torch.tensor([float("nan")]))


def test_save_grid_writes_the_pixels(tmp_path):
    images = torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    path = save_grid(images, tmp_path / "sub" / "grid.png", nrow=2, padding=0, scale=2)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (16, 8)
        pixels = np.asarray(im)
    expected = to_uint8(make_grid(images, 2, padding=0)).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(pixels[::2, ::2], expected)  # nearest-neighbour upscale
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files


@pytest.mark.parametrize("bad", [torch.zeros(3, 8, 8), torch.zeros(1, 2, 8, 8)])
def test_save_grid_rejects_bad_shapes(tmp_path, bad):
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)|channels"):
        save_grid(bad, tmp_path / "x.png")


def test_save_gif_frames_and_durations(tmp_path):
    frames = [torch.full((1, 4, 4), v) for v in (-1.0, 0.0, 1.0)]
    path = save_gif(frames, tmp_path / "a.gif", duration_ms=50, hold_last_ms=700)
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 3
        durations, values = [], []
        for i in range(3):
            im.seek(i)
            durations.append(im.info["duration"])
            values.append(np.asarray(im.convert("L"))[0, 0])
    assert durations == [50, 50, 700]
    assert values[0] < values[1] < values[2]
    with pytest.raises(ValueError, match="at least one frame"):
        save_gif([], tmp_path / "b.gif")
    with pytest.raises(ValueError, match="shape"):
        save_gif([torch.zeros(1, 4, 4), torch.zeros(1, 5, 4)], tmp_path / "c.gif")


def test_trajectory_frames_and_recorder_pick_the_same_steps():
    steps, b = 10, 4
    x_t = torch.stack([torch.full((b, 1, 2, 2), i / 10) for i in range(steps + 1)])
    trajectory = SampleTrajectory(
        samples=x_t[-1], x_t=x_t, x0_pred=-x_t[1:], timesteps=torch.arange(steps).flip(0)
    )
    frames = trajectory_frames(trajectory, frames=3, nrow=2, padding=0)
    assert len(frames) == 3
    assert [f[0, 0, 0].item() for f in frames] == pytest.approx([0.0, 0.5, 1.0])  # first/mid/last
    x0_frames = trajectory_frames(trajectory, frames=2, predicted_x0=True, padding=0)
    assert x0_frames[-1][0, 0, 0].item() == pytest.approx(-1.0)
    recorder = FrameRecorder(steps, frames=3, nrow=2)
    for step in range(steps):
        recorder(step, steps - 1 - step, x_t[step + 1], x_t[step + 1])
    # after-step frames: steps 0, 4 or 5, 9 -> values 0.1, ~0.5-0.6, 1.0
    assert len(recorder.frames) == 3
    assert recorder.frames[-1][0, 2, 2].item() == pytest.approx(1.0)


def test_missing_pillow_names_the_extra(tmp_path, monkeypatch):
    # a None entry in sys.modules makes any import of the name fail, as if not installed
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(ImportError, match=r'pip install "diffusionkit\[data\]"'):
        save_grid(torch.zeros(1, 1, 4, 4), tmp_path / "x.png")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("diffusionkit.utils.atomic.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # temp file removed


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_atomic_writes_get_the_permissions_of_a_plain_write(tmp_path):
    # mkstemp makes private 0600 files; a published file must be as readable as open()'s
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
        save_grid(torch.zeros(1, 1, 4, 4), tmp_path / "grid.png")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "grid.png").stat().st_mode & 0o777 == 0o644
