"""Reading IDX files, the format of MNIST and Fashion-MNIST.

Layout (LeCun et al., http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code, the
number of dimensions ``n``; then ``n`` big-endian uint32 sizes; then the values, big-endian,
row-major. Files may be gzip-compressed; that is detected from the content, not the name.
Every check failure raises :class:`IDXFormatError` naming the file, because a truncated
download otherwise shows up much later as a reshape error or as garbage images.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

# Type code -> numpy dtype (big-endian, as the format stores them).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class IDXFormatError(ValueError):
    """An IDX file is corrupted, truncated, or not the array that was expected."""


def read_idx(
    path: str | os.PathLike[str],
    *,
    expected_dtype: np.dtype | type | None = None,
    expected_ndim: int | None = None,
) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed) into a numpy array.

    Args:
        path: the file.
        expected_dtype: if given, the element type the file must declare (e.g. ``np.uint8``).
        expected_ndim: if given, the number of dimensions the file must declare.

    Returns:
        Array with the file's shape, e.g. ``(N, 28, 28)`` for images or ``(N,)`` for labels,
        in native byte order.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        IDXFormatError: on a bad gzip stream, bad magic number, unexpected type or
            dimensions, or a size that does not match the header.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IDXFormatError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or code not in IDX_DTYPES:
        raise IDXFormatError(
            f"{path}: not an IDX file (magic bytes {data[:4].hex()}, expected 0000 followed "
            f"by a type code in {sorted(f'{c:02x}' for c in IDX_DTYPES)} and a dimension count)"
        )
    dtype = IDX_DTYPES[code]
    if expected_dtype is not None and dtype != np.dtype(expected_dtype).newbyteorder(">"):
        # Single-byte types compare equal regardless of byte order, so this is exact.
        raise IDXFormatError(f"{path}: holds {dtype} values, expected {np.dtype(expected_dtype)}")
    if ndim == 0 or (expected_ndim is not None and ndim != expected_ndim):
        raise IDXFormatError(
            f"{path}: declares {ndim} dimensions, expected {expected_ndim or 'at least 1'}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(f"{path}: truncated header ({len(data)} of {header} bytes)")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected_bytes = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected_bytes:
        state = "truncated" if len(data) < expected_bytes else "has trailing bytes"
        raise IDXFormatError(
            f"{path}: {state}: {len(data)} bytes, but its header declares shape {shape} of "
            f"{dtype} values, which needs {expected_bytes} bytes"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    # A copy: the buffer is read-only bytes, and torch.from_numpy wants writable memory.
    return array.astype(dtype.newbyteorder("="))


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzip."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise IDXFormatError(f"{path}: corrupted or truncated gzip data ({error})") from error
