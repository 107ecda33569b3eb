"""Exception hierarchy of vadpipe.

Every error a user can trigger with bad input or a missing file is one of these, with a
message that says what went wrong and what to do. The extraction runner turns them into
``failed`` manifest rows; anything else is a bug and propagates.
"""

from __future__ import annotations


class VadpipeError(Exception):
    """Base class of all errors vadpipe raises on purpose."""


class VideoDecodeError(VadpipeError):
    """A video cannot be opened or decoded (corrupt, truncated, empty, not a video)."""


class VideoTooShortError(VideoDecodeError):
    """A video decodes but has fewer frames than one clip needs."""


class WeightsNotFoundError(VadpipeError):
    """A backbone's weight file is not installed or not registered."""


class WeightsIntegrityError(VadpipeError):
    """A weight file exists but its checksum or content is not what was expected."""


class ManifestError(VadpipeError):
    """A manifest CSV is malformed or does not match its schema."""


class ConfigError(VadpipeError):
    """An option value or combination of options is invalid."""


class CheckpointError(ConfigError):
    """A file given as a head checkpoint is not one vadpipe can load: not a torch file, a
    pickle a safe load refuses, a state dict without vadpipe's metadata, a checkpoint of a
    head this version does not know, or one that cannot be resumed."""


class FeatureLoadError(VadpipeError):
    """A feature file is missing, unreadable or not in a layout vadpipe understands."""


class EvaluationError(VadpipeError):
    """Scores and ground truth do not fit together (missing videos, length mismatch)."""


class WorkerError(VadpipeError):
    """A worker process of a multi-device run stopped before it could take work."""


class DiskFullError(VadpipeError):
    """A write failed because the disk (or the user's quota) is full; nothing half-written is left."""


class SharedMemoryError(VadpipeError):
    """A decoding worker could not put a clip batch in shared memory (``/dev/shm`` full): its
    video fails, the run goes on."""


class LostClipsError(VadpipeError):
    """Fewer clip features reached the model than a video's decoder produced (a batch lost
    between processes, e.g. in a full ``/dev/shm``), or a decoder's counts do not add up:
    the video fails rather than be recorded with part of its clips."""


class ExportError(VadpipeError):
    """A detector cannot be exported, or an exported file cannot be used (what to do is in
    the message)."""
