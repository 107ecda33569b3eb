"""What an exported detector carries beside its graph: the recipe to feed it, the threshold.

:class:`DetectorInfo` is stored as JSON in the ONNX file's metadata (key
:data:`METADATA_KEY`) and in a TorchScript file's ``extra_files``, so the file alone is
enough to decode, resize and cut a video into the clips the graph takes. This module needs
neither torch nor the training code.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from vadpipe.errors import ExportError

#: Metadata key (ONNX ``metadata_props``) / extra file name (TorchScript) of the JSON.
METADATA_KEY = "vadpipe.detector"
#: Version of the layout below; a runtime refuses files of a newer schema.
EXPORT_SCHEMA = 1
#: Names of the graph's inputs and outputs (:class:`~vadpipe.pipeline.export.graph.DetectorGraph`).
INPUTS = ("clips", "context")
OUTPUTS = ("features", "scores")


@dataclass(frozen=True)
class DetectorInfo:
    """How to use an exported detector.

    Attributes:
        head: the head's registry name; ``causal_context``: its
            :attr:`~vadpipe.heads.base.AnomalyHead.causal_context` (``None``: scores depend on
            the whole video, so streamed scores are provisional).
        threshold, threshold_source: the event threshold the checkpoint carries (or the default).
        backbone, weights_sha256: the backbone and its weights (``"random"`` for random weights).
        clip_len, stride, tail, drop_last, fps, decoder: the clip rule and decoding of stage one.
        resize, interpolation, antialias: the host-side resize (short side, or ``[h, w]``).
        crop_size, crop_order, crops: crops the graph takes itself; ``channels``: ``C`` of
            the features (crops, or nodes for node backbones); ``feature_dim``: ``D``.
        checkpoint, checkpoint_sha256: the head checkpoint it was exported from.
        format, vadpipe_version, schema: the file's format and who wrote it.
    """

    head: str
    causal_context: int | None
    threshold: float
    threshold_source: str
    backbone: str
    weights_sha256: str
    clip_len: int
    stride: int
    tail: str
    drop_last: int
    fps: float | None
    decoder: str
    resize: int | list[int]
    interpolation: str
    antialias: bool
    crop_size: int
    crop_order: str
    crops: int
    channels: int
    feature_dim: int
    checkpoint: str
    checkpoint_sha256: str
    format: str
    vadpipe_version: str
    schema: int = EXPORT_SCHEMA

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> "DetectorInfo":
        """Parse the stored JSON.

        Raises:
            ExportError: not vadpipe's JSON, a newer schema, or missing fields.
        """
        try:
            data: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError as e:
            raise ExportError(f"{where}: the {METADATA_KEY!r} metadata is not JSON ({e}); export the detector "
                              "again with `vadpipe export`") from e
        schema = data.get("schema")
        if not isinstance(schema, int) or schema > EXPORT_SCHEMA:
            raise ExportError(f"{where}: exported with detector schema {schema!r}; this vadpipe reads schema "
                              f"<= {EXPORT_SCHEMA}: upgrade vadpipe")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - {"schema"} - set(data))
        if missing:
            raise ExportError(f"{where}: the detector metadata lacks {', '.join(missing)}; export it again")
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def causal(self) -> bool:
        return self.causal_context is not None
