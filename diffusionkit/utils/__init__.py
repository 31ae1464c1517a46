"""Utilities: image grids and GIFs of samples, and atomic file writes.

Not imported by ``import diffusionkit``; writing images needs Pillow
(``pip install "diffusionkit[data]"``), imported only when a file is written.
"""

from diffusionkit.utils.atomic import (
    atomic_path,
    atomic_save,
    atomic_write_bytes,
    atomic_write_text,
    fsync_dir,
)
from diffusionkit.utils.images import (
    FrameRecorder,
    make_grid,
    save_gif,
    save_grid,
    to_uint8,
    trajectory_frames,
)

__all__ = [
    "FrameRecorder",
    "atomic_path",
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
    "make_grid",
    "save_gif",
    "save_grid",
    "to_uint8",
    "trajectory_frames",
]
