"""Utilities: image grids and GIFs of samples, atomic file writes, and reading only regular
files (never blocking on a FIFO).

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
from diffusionkit.utils.files import (
    NotARegularFileError,
    is_regular_file,
    open_regular,
    read_regular,
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
    "NotARegularFileError",
    "atomic_path",
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
    "is_regular_file",
    "make_grid",
    "open_regular",
    "read_regular",
    "save_gif",
    "save_grid",
    "to_uint8",
    "trajectory_frames",
]
