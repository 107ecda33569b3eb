"""Cutting a stream of decoded frames into fixed-length clips."""

from __future__ import annotations

from dataclasses import dataclass

TAIL_POLICIES = ("drop", "pad")


@dataclass(frozen=True)
class ClipSpec:
    """How a video is cut into clips.

    Attributes:
        length: frames per clip (16 for I3D and C3D).
        stride: frames between the starts of consecutive clips (``length``: no overlap).
        tail: ``"drop"``: frames after the last complete clip are ignored (what the
            community feature sets do); ``"pad"``: an incomplete last clip is completed
            by repeating the video's last frame.
    """

    length: int = 16
    stride: int = 16
    tail: str = "drop"
