"""Whether a checkpoint folder may be loaded: its manifest, its files, and DCP's metadata.

Two different questions, answered separately:

* **Integrity.** ``paratune.json`` lists a SHA-256 and a size for every file. It proves the files
  are the ones the save wrote — not truncated by a crash or a full disk, not corrupted by a bad
  disk or copy. It does *not* prove who wrote them: anybody who can write the folder can rewrite
  the files and the manifest together. A damaged checkpoint is skipped for an older one.
* **Safety.** So loading never trusts the content either. DCP's ``.metadata`` is a pickle; it is
  read by an unpickler that resolves only the exact (module, name) pairs in ``ALLOWED_GLOBALS`` —
  the inert metadata classes DCP writes for the engine's state — and it must describe tensors
  only, stored in the folder's own listed files. DCP loads tensors with ``torch.load(...,
  weights_only=True)`` but *byte* entries with ``weights_only=False``, which runs any code in
  them; the engine never writes byte entries, so a checkpoint holding one is refused. Unsafe
  content is refused outright, never skipped: it is not damage but something written by another
  program or person.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pickle
from collections.abc import Collection
from pathlib import Path
from typing import IO, Any, ClassVar

import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_md
from torch.distributed.checkpoint.filesystem import _StorageInfo

from engine.config import ConfigError
from engine.units import MIB

MANIFEST = "paratune.json"
FORMAT = 1
METADATA = ".metadata"  # DCP's global metadata file

# Every global that DCP's .metadata references for the engine's state, found by saving each
# layout (single process, DDP, ZeRO-1, FSDP2 ZeRO-2/3, TP, TP+SP, PP, interleaved PP, dp x tp,
# bf16, fp16 with its scaler) under torch 2.13 and listing the pickle's GLOBAL/STACK_GLOBAL
# opcodes. Exact pairs: no dotted names, so no attribute walks such as `Metadata.__init__`.
# A torch whose DCP writes another class is refused with the module and name to review here.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("torch.distributed.checkpoint.metadata", "Metadata"),
        ("torch.distributed.checkpoint.metadata", "StorageMeta"),
        ("torch.distributed.checkpoint.metadata", "MetadataIndex"),
        ("torch.distributed.checkpoint.metadata", "TensorStorageMetadata"),
        ("torch.distributed.checkpoint.metadata", "TensorProperties"),
        ("torch.distributed.checkpoint.metadata", "ChunkStorageMetadata"),
        ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"),  # an Enum
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch.serialization", "_get_layout"),  # a lookup of torch.strided etc. by name
        ("torch", "Size"),
        ("torch", "float32"),  # parameters and optimizer state
        ("torch", "uint8"),  # the RNG state
        ("torch", "float64"),  # the fp16 loss scaler's state
        ("pathlib", "PosixPath"),  # StorageMeta.checkpoint_id
        # never written by the engine; allowed (it is an empty dataclass) so that a byte entry is
        # refused below with its key, rather than as an anonymous unpickling error
        ("torch.distributed.checkpoint.metadata", "BytesStorageMetadata"),
    }
)
# The only objects the pickle may fill in with state (BUILD). Without this limit, BUILD on a
# class or function would set attributes on it: a way to rewrite the allowed classes themselves.
_BUILD_TARGETS = (
    dcp_md.Metadata,
    dcp_md.StorageMeta,
    dcp_md.MetadataIndex,
    dcp_md.TensorStorageMetadata,
    dcp_md.TensorProperties,
    dcp_md.ChunkStorageMetadata,
    dcp_md.BytesStorageMetadata,
    _StorageInfo,
)


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: missing, damaged, unsafe, or for another model."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint whose files do not match its manifest (or whose manifest is unreadable)."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def complete_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under ``root``, oldest first."""
    out = []
    for path in Path(root).glob("step_*"):
        if path.is_dir() and (path / MANIFEST).is_file():
            try:
                out.append((int(path.name.removeprefix("step_")), path))
            except ValueError:
                continue
    return sorted(out)


def read_manifest(path: Path, *, verify: bool = True) -> dict[str, Any]:
    """The manifest of a checkpoint folder; with ``verify``, every file's size and hash is
    checked (``DamagedCheckpoint`` if one differs)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DamagedCheckpoint(f"checkpoint {path} has no readable {MANIFEST}: {err!r}") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path}: unknown format {manifest.get('format')!r}; valid: {FORMAT}."
        )
    if verify:
        for name, expected in files.items():
            file = path / name
            if not file.is_file():
                raise DamagedCheckpoint(f"checkpoint {path} is damaged: {name} is missing.")
            if file.stat().st_size != expected["bytes"]:
                raise DamagedCheckpoint(
                    f"checkpoint {path} is damaged: {name} has {file.stat().st_size} bytes, "
                    f"expected {expected['bytes']} (truncated?)."
                )
            if file_sha256(file) != expected["sha256"]:
                raise DamagedCheckpoint(f"checkpoint {path} is damaged: {name} fails its checksum.")
    return manifest


def newest_verified(root: str | Path) -> tuple[int, Path, dict[str, Any], list[str]]:
    """The newest complete checkpoint under ``root`` whose files verify: (step, folder,
    manifest, why each newer one was skipped). Only damage skips one; any other refusal stops."""
    found = complete_checkpoints(root)
    if not found:
        raise CheckpointError(f"{root} holds no complete checkpoint.")
    skipped = []
    for step, path in reversed(found):
        try:
            return step, path, read_manifest(path), skipped
        except DamagedCheckpoint as err:
            skipped.append(str(err))
    raise CheckpointError(
        f"none of the {len(found)} complete checkpoint(s) in {root} verifies: " + " ".join(skipped)
    )


class _SafeUnpickler(pickle._Unpickler):
    """Builds only the listed classes. The pure-Python unpickler, because its opcode table can
    be extended: BUILD is checked too (the C unpickler offers no hook for it)."""

    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: IO[bytes], *, where: str) -> None:
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise CheckpointError(
                f"checkpoint {self.where}: refusing to unpickle {name!r} from module "
                f"{module!r} in {METADATA}; only DCP's metadata classes are allowed "
                "(engine.checkpoint_verify.ALLOWED_GLOBALS)."
            )
        # one getattr on the module: listed names hold no dots, so nothing is walked
        return getattr(importlib.import_module(module), name)

    def _load_build(self) -> None:
        target = self.stack[-2]  # BUILD: the state is on top, the object under it
        if type(target) not in _BUILD_TARGETS:
            raise CheckpointError(
                f"checkpoint {self.where}: refusing to set state on {target!r} in {METADATA}; "
                "only instances of DCP's metadata classes take state."
            )
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _load_build


def load_metadata(file: IO[bytes], *, where: str) -> dcp_md.Metadata:
    """Unpickle DCP metadata safely; refuse anything but tensor entries (naming the key)."""
    try:
        metadata = _SafeUnpickler(file, where=where).load()
    except CheckpointError:
        raise
    except Exception as err:  # a malformed pickle: any of pickle's many exception types
        raise CheckpointError(f"checkpoint {where}: {METADATA} is unreadable: {err!r}") from None
    if type(metadata) is not dcp_md.Metadata or not isinstance(metadata.state_dict_metadata, dict):
        raise CheckpointError(
            f"checkpoint {where}: {METADATA} holds a {type(metadata).__name__}, not DCP metadata."
        )
    for key, entry in metadata.state_dict_metadata.items():
        if type(entry) is dcp_md.BytesStorageMetadata:
            raise CheckpointError(
                f"checkpoint {where}: entry {key!r} is stored as bytes, which DCP would unpickle "
                "with torch.load(weights_only=False), running any code in it; the engine stores "
                "tensors only, so this checkpoint was not written by it and is refused."
            )
        if type(entry) is not dcp_md.TensorStorageMetadata:
            raise CheckpointError(
                f"checkpoint {where}: entry {key!r} is a {type(entry).__name__}, not a tensor."
            )
    return metadata


def _check_storage(metadata: dcp_md.Metadata, *, where: str, files: Collection[str]) -> None:
    """Every tensor lies in a file the manifest lists (and so verified), read as stored."""
    if not isinstance(metadata.storage_data, dict):
        raise CheckpointError(f"checkpoint {where}: {METADATA} has no storage table.")
    for index, info in metadata.storage_data.items():
        name = getattr(info, "relative_path", None)
        if type(info) is not _StorageInfo or name not in files or Path(name).name != name:
            raise CheckpointError(
                f"checkpoint {where}: {METADATA} places {getattr(index, 'fqn', index)!r} in "
                f"{name!r}, which is not one of the checkpoint's files {sorted(files)}."
            )
        if info.transform_descriptors:  # the engine writes no compression or other transforms
            raise CheckpointError(
                f"checkpoint {where}: {getattr(index, 'fqn', index)!r} is stored with "
                f"transforms {info.transform_descriptors!r}; the engine writes none."
            )


def read_metadata(path: Path, manifest: dict[str, Any]) -> dcp_md.Metadata:
    """A verified checkpoint's DCP metadata, checked to describe tensors in its own files."""
    with (path / METADATA).open("rb") as f:
        metadata = load_metadata(f, where=str(path))
    _check_storage(metadata, where=str(path), files=manifest["files"])
    return metadata


class SafeReader(dcp.FileSystemReader):
    """DCP's file reader for a verified checkpoint. The metadata is read and checked (by
    ``read_metadata``) when the reader is made, so a refusal comes before DCP reads any data, and
    once: DCP's own ``read_metadata`` calls get the checked copy."""

    def __init__(self, path: Path, *, manifest: dict[str, Any]) -> None:
        super().__init__(path)
        self.metadata = read_metadata(Path(path), manifest)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        # always the one global file: DCP's fallback to per-rank files is never needed here
        if getattr(self.metadata, "storage_meta", None) is None:
            self.metadata.storage_meta = dcp_md.StorageMeta()
        self.metadata.storage_meta.load_id = self.load_id
        return self.metadata
