"""The run record: one ``extract-<time>.json`` per ``vadpipe extract`` run, beside its features.

It holds the full feature recipe (the :class:`~vadpipe.pipeline.extract.config.ExtractConfig`
as a dict), the ``config_hash`` that the run's ``features.csv`` rows carry, the sha256 of the
weights, where and how the run went, and (once it finished) its counts. Training reads it
(:mod:`vadpipe.manifests.provenance`) to record the recipe in a head's checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vadpipe.errors import ManifestError
from vadpipe.manifests.atomic import atomic_write_text

__all__ = ["RUN_RECORD_GLOB", "RunRecord", "new_run_path", "utc_now"]

#: File names of run records in a features folder (they sort by start time).
RUN_RECORD_GLOB = "extract-*.json"


def utc_now() -> str:
    """The time now, UTC, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_path(root: str | os.PathLike) -> Path:
    """``root/extract-<UTC time to the microsecond>.json``: a fresh record's file name."""
    return Path(root) / f"extract-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%fZ')}.json"


@dataclass
class RunRecord:
    """One extraction run.

    Attributes:
        vadpipe_version: the version that ran.
        started: start time (UTC, ISO 8601).
        config: the ``ExtractConfig`` as a dict (the feature recipe and run options).
        config_hash: the hash in every ``features.csv`` row this run wrote.
        weights_sha256: sha256 of the backbone's weight file (``"random"`` for random weights).
        weights: the weights entry's ``name``, ``source`` and ``license``.
        device: where the models ran (``"cuda:0"``, ``"cpu,cpu"``).
        engine: the engine (``local``, ``ray``).
        torch: the PyTorch version.
        inputs: videos given.
        to_process: videos not skipped as already done.
        finished, ok, failed, skipped, clips, seconds: set when the run ends.
        per_device: videos and clips per device (multi-device runs).
    """

    config: dict[str, Any]
    config_hash: str
    weights_sha256: str
    vadpipe_version: str = ""
    started: str = ""
    weights: dict[str, str] = field(default_factory=dict)
    device: str = ""
    engine: str = "local"
    torch: str = ""
    inputs: int = 0
    to_process: int = 0
    finished: str | None = None
    ok: int | None = None
    failed: int | None = None
    skipped: int | None = None
    clips: int | None = None
    seconds: float | None = None
    per_device: dict[str, Any] | None = None

    @property
    def backbone(self) -> str:
        """The backbone the features were made with."""
        return str(self.config.get("backbone", ""))

    def finish(self, *, ok: int, failed: int, skipped: int, clips: int, seconds: float,
               per_device: dict[str, Any] | None = None) -> None:
        """Record the end of the run."""
        self.finished = utc_now()
        self.ok, self.failed, self.skipped, self.clips = ok, failed, skipped, clips
        self.seconds = round(seconds, 3)
        self.per_device = per_device or None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (fields not set yet are left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def write(self, path: str | os.PathLike) -> None:
        """Write atomically (a killed run leaves the previous version or nothing)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, data: Any, source: str = "run record") -> RunRecord:
        """Parse a record; :class:`ManifestError` names what is missing or of the wrong type."""
        if not isinstance(data, dict):
            raise ManifestError(f"{source}: expected a JSON object, found {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise ManifestError(f"{source}: missing {', '.join(missing)} (not a vadpipe run record?)")
        for key, types in _TYPES.items():
            if key in data and data[key] is not None and not isinstance(data[key], types):
                raise ManifestError(f"{source}: {key} should be {_TYPE_NAMES[key]}, found {data[key]!r}")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def read(cls, path: str | os.PathLike) -> RunRecord:
        """Read ``path``; :class:`ManifestError` for an unreadable or malformed file."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ManifestError(f"{path}: unreadable run record ({e})") from e
        return cls.from_dict(data, source=str(path))


_REQUIRED = ("config", "config_hash", "weights_sha256")
_TYPES: dict[str, type | tuple[type, ...]] = {
    "config": dict, "config_hash": str, "weights_sha256": str, "weights": dict, "device": str, "engine": str,
    "inputs": int, "to_process": int, "ok": int, "failed": int, "skipped": int, "clips": int,
    "seconds": (int, float), "per_device": dict,
}
_TYPE_NAMES = {k: " or ".join(t.__name__ for t in (v if isinstance(v, tuple) else (v,))) for k, v in _TYPES.items()}
