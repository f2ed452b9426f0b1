"""Token files (``data=tokens``): deterministic windows by sample index, refused before launch
when an id lies outside the vocabulary, and a real run on one learns (its loss falls)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.config import ConfigError, DataConfig
from engine.data import TokenFile, training_tokens
from engine.validate import validate
from tests.helpers import cli, tiny_config

VOCAB, SEQ = 256, 64


def write_tokens(path: Path, ids: np.ndarray, dtype: str = "uint16") -> str:
    ids.astype(dtype).tofile(path)
    return str(path)


def cyclic_tokens(n: int, *, seed: int = 0) -> np.ndarray:
    """A fixed random order of the vocabulary, repeated: each id predicts the next."""
    order = np.random.default_rng(seed).permutation(VOCAB)
    return np.tile(order, -(-n // VOCAB))[:n]


def tokens_config(path: str, dtype: str = "uint16", **sections):
    return tiny_config(data={"kind": "tokens", "path": path, "dtype": dtype}, **sections)


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_windows_are_the_files_ids_and_a_function_of_the_index(tmp_path, dtype):
    ids = np.arange(5000) % VOCAB
    path = write_tokens(tmp_path / "t.bin", ids, dtype)
    a = TokenFile(SEQ, 0, 8, path=path, dtype=dtype)
    b = TokenFile(SEQ, 0, 8, path=path, dtype=dtype)
    seq = a.sample(11)
    assert seq.dtype == torch.int64 and seq.shape == (SEQ + 1,)
    start = int(seq[0])  # consecutive ids of the file (which counts up mod VOCAB)
    assert torch.equal(seq, (torch.arange(SEQ + 1) + start) % VOCAB)
    assert torch.equal(a.shard(3, dp_rank=0, dp=1), b.shard(3, dp_rank=0, dp=1))
    assert not torch.equal(a.shard(3, dp_rank=0, dp=1), a.shard(4, dp_rank=0, dp=1))


def test_every_layout_sees_the_same_global_batch(tmp_path):
    path = write_tokens(tmp_path / "t.bin", cyclic_tokens(10_000))
    data = training_tokens(tokens_config(path))
    whole = data.shard(2, dp_rank=0, dp=1)
    for dp in (2, 4):
        assert torch.equal(torch.cat([data.shard(2, dp_rank=r, dp=dp) for r in range(dp)]), whole)
    micro = data.micro_batches(2, dp_rank=0, dp=1, micro_batch=2)
    assert torch.equal(torch.cat([x for x, _ in micro]), whole[:, :-1])


def test_an_id_beyond_the_vocabulary_is_refused_with_its_position(tmp_path):
    ids = cyclic_tokens(3000)
    ids[1234] = 300
    path = write_tokens(tmp_path / "t.bin", ids)
    with pytest.raises(ConfigError, match=r"token id 300 at position 1234.*model.vocab_size=256"):
        validate(tokens_config(path))


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"kind": "tokens"}, ["data.path"]),
        ({"kind": "tokens", "path": "/nonexistent/t.bin"}, ["/nonexistent/t.bin"]),
        ({"kind": "synthetic", "path": "x.bin"}, ["data.path", "data=tokens"]),
        ({"kind": "tokens", "path": "{odd}", "dtype": "uint32"}, ["uint32", "whole number"]),
        ({"kind": "tokens", "path": "{short}"}, ["fewer than one sequence"]),
    ],
)
def test_unusable_token_files_are_refused(tmp_path, data, words):
    (tmp_path / "odd.bin").write_bytes(b"\0" * 6)
    write_tokens(tmp_path / "short.bin", np.arange(10))
    data = {
        k: v.format(odd=tmp_path / "odd.bin", short=tmp_path / "short.bin") for k, v in data.items()
    }
    with pytest.raises(ConfigError) as err:
        validate(tiny_config(data={**DataConfig().__dict__, **data}))
    for word in words:
        assert word in str(err.value)


def test_cli_refuses_a_bad_token_file_before_launch(tmp_path):
    ids = cyclic_tokens(3000)
    ids[77] = 999
    path = write_tokens(tmp_path / "t.bin", ids)
    proc = cli("run", "data=tokens", f"data.path={path}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "token id 999 at position 77" in proc.stderr


def test_a_run_on_a_token_file_learns(tmp_path):
    path = write_tokens(tmp_path / "t.bin", cyclic_tokens(50_000))
    out = tmp_path / "result.json"
    proc = cli(
        "run", "data=tokens", f"data.path={path}", "train.lr=3e-3", f"run.out={out}",
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = json.loads(out.read_text())["losses"]
    assert losses[-1] < 0.8 * losses[0], losses  # log(256) = 5.5 at the start
