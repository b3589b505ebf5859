"""Checkpoints of the online models: versioned files, authenticated before anything is unpickled.

File layout: one JSON header line (version, examples offset, created, digest) then the pickle.
The digest is an HMAC-SHA256 of the payload under ``STREAM_APP_CHECKPOINT_KEY``; without a key it
is a plain SHA-256, which catches corruption but not tampering (docs/concepts/learning.md says so). A file whose
digest does not match is refused: pickle must never see bytes we did not write.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

PREFIX = "river-"
SUFFIX = ".ckpt"


class CheckpointRejected(ValueError):
    """A checkpoint file that failed its integrity check or could not be read."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    version: str
    offset: int  # last examples-log offset the state includes
    created_ms: int
    state: Any


def _digest(payload: bytes, key: bytes | None) -> str:
    if key:
        return "hmac-sha256:" + hmac.new(key, payload, hashlib.sha256).hexdigest()
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def save(directory: Path, version: str, offset: int, state: Any, key: bytes | None, keep: int = 3) -> Path:
    """Write atomically (temp file + rename), then drop all but the newest ``keep`` checkpoints."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    header = {"version": version, "offset": offset, "created_ms": int(time.time() * 1000),
              "digest": _digest(payload, key)}
    path = directory / f"{PREFIX}{offset + 1:012d}{SUFFIX}"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(header) + b"\n" + payload)
    os.replace(tmp, path)
    for old in sorted(directory.glob(f"{PREFIX}*{SUFFIX}"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load(path: Path, key: bytes | None) -> Checkpoint:
    raw = path.read_bytes()
    head, sep, payload = raw.partition(b"\n")
    if not sep:
        raise CheckpointRejected(f"{path.name}: no header")
    try:
        header = orjson.loads(head)
        expected = str(header["digest"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise CheckpointRejected(f"{path.name}: unreadable header") from None
    if not hmac.compare_digest(expected, _digest(payload, key)):
        raise CheckpointRejected(f"{path.name}: digest does not match (corrupt, tampered, or another key)")
    return Checkpoint(header["version"], int(header["offset"]), int(header["created_ms"]), pickle.loads(payload))


def latest(directory: Path, key: bytes | None) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint that passes its check, and the reasons newer ones were refused."""
    refused: list[str] = []
    for path in sorted(directory.glob(f"{PREFIX}*{SUFFIX}"), reverse=True):
        try:
            return load(path, key), refused
        except (CheckpointRejected, OSError, pickle.UnpicklingError) as exc:
            refused.append(str(exc))
    return None, refused
