"""Loading a checkpoint never runs code from it: hostile metadata and byte entries are refused.

Every payload here would leave a marker file behind if anything in it were executed; each test
asserts the refusal *and* that the marker never appeared.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

from engine.checkpoint_verify import (
    ALLOWED_GLOBALS,
    MANIFEST,
    CheckpointError,
    complete_checkpoints,
    load_metadata,
    read_manifest,
)
from engine.export import export
from tests.helpers import cli, launch_engine, tiny_config

BASE = {"global_batch": 8, "warmup_steps": 1}
_MD = "torch.distributed.checkpoint.metadata"


# --- hand-written pickles (protocol 4), so the tests do not depend on what pickle emits ---
def _str(s: str) -> bytes:
    raw = s.encode()
    return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE


def _stack_global(module: str, name: str) -> bytes:
    return _str(module) + _str(name) + b"\x93"  # STACK_GLOBAL


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


def _call(func: bytes, *args: bytes) -> bytes:
    """``func(*args)``: args are pickled objects; TUPLE then REDUCE."""
    return func + b"(" + b"".join(args) + b"tR"


def _pickle(body: bytes) -> bytes:
    frame = body + b"."
    return b"\x80\x04\x95" + struct.pack("<Q", len(frame)) + frame


def _unpickle(data: bytes) -> object:
    return load_metadata(io.BytesIO(data), where="test")


def test_payloads_are_executable_by_plain_pickle(tmp_path):
    """The payloads below are real: plain pickle runs them (so their refusal means something)."""
    marker = tmp_path / "ran"
    pickle.loads(_pickle(_call(_stack_global("os", "system"), _str(f"touch {marker}"))))
    assert marker.exists()
    marker.unlink()
    touch = _stack_global("pathlib", "PosixPath.touch")
    pickle.loads(
        _pickle(_call(touch, _call(_stack_global("pathlib", "PosixPath"), _str(str(marker)))))
    )
    assert marker.exists()


@pytest.mark.parametrize("opcode", [_stack_global, _global])
@pytest.mark.parametrize(
    ("module", "name"),
    [
        # dotted names through a DCP module: protocol 4 resolves them attribute by attribute
        ("torch.distributed.checkpoint.filesystem", "os.system"),
        ("torch.distributed.checkpoint.filesystem", "os.getpid"),
        ("torch.distributed.checkpoint.metadata", "os.system"),
        # a listed class's attributes
        ("torch.distributed.checkpoint.metadata", "Metadata.__init__.__globals__"),
        ("torch.distributed.checkpoint.metadata", "Metadata.__reduce__"),
        ("torch.distributed.checkpoint.metadata", "Metadata.__class__"),
        ("pathlib", "PosixPath.touch"),
        ("torch", "Size.__init__.__globals__"),
        # names from DCP's own modules that are not metadata classes
        ("torch.distributed.checkpoint.filesystem", "os"),
        ("torch.distributed.checkpoint.filesystem", "FileSystemReader"),
        ("torch.distributed.checkpoint", "load"),
        # the plain classics
        ("posix", "system"),
        ("builtins", "eval"),
        ("builtins", "getattr"),
    ],
)
def test_unlisted_globals_are_refused_before_anything_runs(tmp_path, opcode, module, name):
    marker = tmp_path / "ran"
    func = opcode(module, name)
    payloads = [
        _call(func, _str(f"touch {marker}")),
        _call(func, _call(_stack_global("pathlib", "PosixPath"), _str(str(marker)))),
    ]
    for body in payloads:
        with pytest.raises(CheckpointError, match="refusing to unpickle"):
            _unpickle(_pickle(body))
        assert not marker.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [("torch.distributed.checkpoint.metadata", "Metadata"), ("torch.serialization", "_get_layout")],
)
def test_state_is_set_only_on_metadata_instances(module, name):
    """BUILD on a listed class or function would set attributes on the class itself."""
    target = getattr(importlib.import_module(module), name)
    state = b"N}" + _str("planted") + b"K\x01s\x86"  # (None, {"planted": 1}): setattr
    with pytest.raises(CheckpointError, match="refusing to set state"):
        _unpickle(_pickle(_stack_global(module, name) + state + b"b"))
    assert not hasattr(target, "planted")


def test_metadata_must_be_dcp_metadata():
    with pytest.raises(CheckpointError, match="not DCP metadata"):
        _unpickle(_pickle(b"}"))  # an empty dict
    with pytest.raises(CheckpointError, match="unreadable"):
        _unpickle(b"\x80\x04not a pickle")


@pytest.fixture
def saved(zero3_checkpoint) -> Path:
    """The folder of the shared 2-rank zero-3 checkpoint (see conftest.py)."""
    return zero3_checkpoint[0]


@pytest.mark.slow
def test_real_metadata_uses_only_the_listed_globals(saved):
    """What DCP writes for the engine's state loads with the allow-list, and needs all of it
    but fp16's scaler dtype (float64) and the byte-entry class (listed only to name the key)."""
    folder = complete_checkpoints(saved)[-1][1]
    seen = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    Recorder(io.BytesIO((folder / ".metadata").read_bytes())).load()
    assert seen <= set(ALLOWED_GLOBALS)
    never_here = {("torch", "float64"), (_MD, "BytesStorageMetadata")}
    assert set(ALLOWED_GLOBALS) - seen == never_here
    with (folder / ".metadata").open("rb") as f:
        metadata = load_metadata(f, where=str(folder))
    assert "model.tok_emb.weight" in metadata.state_dict_metadata


class _WritesMarker:
    """Unpickled with weights_only=False, this opens (creates) the marker file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _rehash(folder) -> None:
    """Rewrite the manifest to match the files: what anybody who can write the folder can do."""
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"] = {
        p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _with_byte_entry(src, dst, marker, key="model.tok_emb.weight"):
    """A copy of a real checkpoint whose entry ``key`` is turned into a DCP byte entry holding a
    payload, with a manifest that verifies."""
    shutil.copytree(src, dst)
    folder = complete_checkpoints(dst)[-1][1]
    metadata = pickle.loads((folder / ".metadata").read_bytes())  # our own, trusted file
    buf = io.BytesIO()
    torch.save(_WritesMarker(marker), buf)
    (folder / "__9_0.distcp").write_bytes(buf.getvalue())
    metadata.state_dict_metadata[key] = BytesStorageMetadata()
    metadata.storage_data[MetadataIndex(key)] = _StorageInfo(
        relative_path="__9_0.distcp", offset=0, length=len(buf.getvalue())
    )
    (folder / ".metadata").write_bytes(pickle.dumps(metadata, protocol=4))
    _rehash(folder)
    read_manifest(folder)  # the integrity check passes: only the content check can stop it
    return dst


@pytest.mark.slow
def test_byte_entries_are_refused_by_export(tmp_path, saved):
    marker = tmp_path / "ran"
    ckpt = _with_byte_entry(saved, tmp_path / "ckpt", marker)
    with pytest.raises(CheckpointError, match=r"'model\.tok_emb\.weight' is stored as bytes"):
        export(ckpt, tmp_path / "model.pt")
    assert not marker.exists()
    assert not (tmp_path / "model.pt").exists()
    # the command line: status 2, one line
    out = cli("export", f"checkpoint.dir={ckpt}", f"export.out={tmp_path / 'cli.pt'}", cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "'model.tok_emb.weight' is stored as bytes" in lines[0], lines
    assert not marker.exists() and not (tmp_path / "cli.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("key", ["model.tok_emb.weight", "rng"])
def test_byte_entries_are_refused_on_resume(tmp_path, saved, key):
    marker = tmp_path / "ran"
    ckpt = _with_byte_entry(saved, tmp_path / "ckpt", marker, key)
    cfg = tiny_config(
        parallel={"dp": 2},
        train={**BASE, "steps": 6, "micro_batch": 4},
        checkpoint={"dir": str(ckpt), "resume": True},
    )
    res, logs = launch_engine(cfg, tmp_path / "resume")
    assert not res.ok
    assert f"{key!r} is stored as bytes" in logs, logs[-3000:]
    assert not marker.exists()


@pytest.mark.slow
def test_hostile_metadata_with_a_matching_manifest_is_refused_on_resume(tmp_path, saved):
    """A dotted-name payload as the whole metadata file, re-hashed so it passes integrity."""
    marker = tmp_path / "ran"
    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved, ckpt)
    folder = complete_checkpoints(ckpt)[-1][1]
    payload = _call(
        _stack_global("torch.distributed.checkpoint.filesystem", "os.system"),
        _str(f"touch {marker}"),
    )
    (folder / ".metadata").write_bytes(_pickle(payload))
    _rehash(folder)
    cfg = tiny_config(
        train={**BASE, "steps": 6, "micro_batch": 8},
        checkpoint={"dir": str(ckpt), "resume": True},
    )
    res, logs = launch_engine(cfg, tmp_path / "resume")
    assert not res.ok
    expected = (
        "refusing to unpickle 'os.system' from module 'torch.distributed.checkpoint.filesystem'"
    )
    assert expected in logs, logs[-3000:]
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        export(ckpt, tmp_path / "model.pt")
    assert not marker.exists()
