"""A flat binary file of token ids, as nanoGPT-style pipelines write them (``train.bin``:
uint16 or uint32, no header), memory-mapped and checked before anything is launched.

numpy only (no torch): the CLI checks a file before it starts any rank.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from engine.config import ConfigError, DataConfig

_CHUNK = 1 << 24  # ids scanned at a time: bounded memory on files far larger than RAM


def open_tokens(path: str, dtype: str) -> np.memmap:
    """The file's ids, memory-mapped read-only (ConfigError when it is not a whole number of
    ``dtype`` ids)."""
    size = os.path.getsize(path)
    itemsize = np.dtype(dtype).itemsize
    if size % itemsize:
        raise ConfigError(
            f"`data.path`={path} holds {size} bytes, not a whole number of data.dtype={dtype} "
            f"ids ({itemsize} bytes each); is data.dtype right?"
        )
    return np.memmap(path, dtype=dtype, mode="r")


def check_tokens(data: DataConfig, *, vocab_size: int, seq_len: int) -> None:
    """Refuse a tokens file that is missing, too short for one sequence, or holds an id outside
    the vocabulary (naming the first such id and its position)."""
    if data.kind != "tokens":
        if data.path:
            raise ConfigError(
                f"`data.path`={data.path} is read only with data=tokens, but data.kind="
                f"{data.kind}; select data=tokens or leave data.path unset."
            )
        return
    if not data.path:
        raise ConfigError("data=tokens needs `data.path`, the token file; set data.path=FILE.")
    try:
        stat = os.stat(data.path)
    except OSError as err:
        raise ConfigError(f"`data.path`={data.path} cannot be read: {err.strerror}.") from None
    _scan(data.path, data.dtype, stat.st_size, stat.st_mtime_ns, vocab_size, seq_len)


@functools.cache  # a sweep checks the same file for every trial: scan it once
def _scan(path: str, dtype: str, size: int, mtime_ns: int, vocab_size: int, seq_len: int) -> None:
    ids = open_tokens(path, dtype)
    if len(ids) < seq_len + 1:
        raise ConfigError(
            f"`data.path`={path} holds {len(ids)} tokens, fewer than one sequence of "
            f"model.seq_len + 1 = {seq_len + 1}; use a longer file or a shorter model.seq_len."
        )
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        bad = np.flatnonzero(chunk >= vocab_size)
        if bad.size:
            at = start + int(bad[0])
            raise ConfigError(
                f"`data.path`={path} holds token id {int(ids[at])} at position {at}, outside "
                f"the vocabulary (model.vocab_size={vocab_size}: ids 0..{vocab_size - 1}); "
                "raise model.vocab_size or use a file tokenized for this model."
            )
