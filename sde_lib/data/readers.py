"""File-format readers: idx (optionally gzipped), CIFAR-10 binary, ``.npz`` (image folders: ``files``).

Each returns plain NumPy arrays and raises ``FileNotFoundError`` or ``ValueError`` naming the file when
it is missing or malformed. None of them unpickles anything.
"""

from __future__ import annotations

import gzip
import os
import zipfile

import numpy as np

# idx type byte -> big-endian dtype (LeCun's MNIST format: 0, 0, type, ndim, ndim x int32 dims, data).
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then the image as 3 planes (R, G, B) of 32 x 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _read_bytes(path: str) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic (whatever its name)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip stream ({e})") from None
    return raw


def read_idx(path: str) -> np.ndarray:
    """An idx file (raw or ``.gz``) as a native-endian array of the shape its header declares."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an idx file (magic bytes {raw[:4].hex()!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: idx header truncated ({len(raw)} bytes for {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", ndim, 4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: idx header declares shape {shape} ({expected} bytes), file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_cifar_bin(path: str) -> np.ndarray:
    """A CIFAR-10 binary batch (records of 1 label byte + 3072 CHW bytes) as ``(N, 32, 32, 3)`` uint8."""
    raw = _read_bytes(path)
    if len(raw) == 0 or len(raw) % CIFAR_RECORD:
        raise ValueError(f"{path}: size {len(raw)} bytes is not a positive multiple of the {CIFAR_RECORD}-byte record")
    records = np.frombuffer(raw, np.uint8).reshape(-1, CIFAR_RECORD)
    if records[:, 0].max() > 9:
        raise ValueError(f"{path}: label byte {records[:, 0].max()} out of range 0..9; not a CIFAR-10 binary batch")
    return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def read_npz(path: str) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` (or a lone ``.npy``, under the key ``'x'``), loaded without pickle."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    errors = (ValueError, OSError, zipfile.BadZipFile, EOFError)
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {"x": loaded}
        with loaded:
            return {k: loaded[k] for k in loaded.files}
    except errors as e:
        raise ValueError(f"{path}: cannot read as .npz without pickle ({e})") from None
