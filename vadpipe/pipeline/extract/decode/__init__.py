"""Reading a video as RGB frames: decord when it is safe, PyAV (FFmpeg) otherwise; torchcodec on request.

Reference semantics
-------------------
The reference for *which* frames a video has, in which order and with which pixels, is
what FFmpeg presents through PyAV: iterating ``container.decode(stream)`` over the best
video stream and converting each frame with ``frame.to_ndarray(format="rgb24")``. That is
what every player shows: MP4 edit lists are applied (pre-roll frames of a stream-copy cut
are decoded but not shown), B-frames come out in presentation order.

decord is faster on some files but disagrees with FFmpeg on others (measured with
decord2 3.4.0):

* MP4 with an edit list that hides frames (a cut by stream copy, ``ffmpeg -ss T -c copy``):
  ``len(vr)`` counts the hidden pre-roll packets too, so decord returns the visible frames
  followed by copies of the last frame, and its timestamps / seeks are off by the pre-roll.
  An edit list that only shifts the time line (the B-frame delay every x264 MP4 has) is
  harmless.
* MPEG-TS: decord's index starts at a wrong keyframe: leading frames are dropped and the
  end is padded with copies of the last frame.
* AVI with B-frames: decord has no valid frame timestamps (it reports ~-3.7e17 s).
* High bit depth (e.g. ``yuv420p10le``): decord's RGB conversion differs from FFmpeg's
  (mean abs difference ~0.4-0.7, max ~20 levels). 8-bit 4:2:0/4:2:2/4:4:4 is bit-exact
  at even frame sizes.
* Odd frame width or height with subsampled chroma (4:2:0, 4:2:2), any codec: decord's RGB
  differs from FFmpeg's over the whole picture (MJPEG ``yuvj420p``/``yuvj422p`` 175x97: up
  to 22/26 levels on random pictures; H.264 4:2:2 64x47: up to 81).

So ``backend="auto"`` uses decord only when a cheap check, done once when the reader is
opened (PyAV demuxes the packets without decoding them; decord indexes the file without
decoding it), finds all of the following; otherwise it uses PyAV and says why in
:attr:`VideoInfo.fallback_reason`:

1. the container is MP4/MOV, Matroska/WebM or AVI (:data:`DECORD_CONTAINERS`);
2. the decoded pixel format is 8-bit YUV (:data:`DECORD_PIXEL_FORMATS`), and 4:4:4 where the
   frame width or height is odd;
3. no packet is flagged *discard* by the demuxer (an edit list hides none), and every
   packet has a timestamp;
4. decord opens the file, its frame count equals the number of packets FFmpeg will show,
   and its frame timestamps equal the packets' presentation timestamps (within 2 ms).

With those, decord's frames are bit-identical to PyAV's on every video of
``tests/pipeline/extract/test_decode.py`` (real H.264 and MS-MPEG4v3 fixtures; synthetic H.264, MPEG-4
Part 2, VP9 and MJPEG in MP4/MOV/MKV/WebM/AVI, with and without B-frames, odd frame
sizes, 4:4:4, non-zero start times, variable frame rate); HEVC, VP8, AV1 and MPEG-2 in
MKV/MP4 were checked the same way by hand. Opening costs one demux pass over the file
(about 25 us per packet with PyAV, plus decord's own index under ``"auto"``).

Rotation and size changes
-------------------------
Frames are handed out upright: a display rotation stored by the container (the display
matrix of a phone video, 90/180/270 degrees counterclockwise; FFmpeg >= 7 gives it to every
decoded frame, and the probe decodes the first frame to read it) is applied with
``np.rot90``, as players, the ffmpeg command, OpenCV and torchcodec do, and recorded in
:attr:`VideoInfo.rotation`. Any other angle is not applied and said in
:attr:`VideoInfo.notes`. decord is not used for rotated files: it turns 180 degrees itself
and fails on 90/270 (decord2 3.4.0); torchcodec is not used either.

Where the frame size changes mid-stream (a camera that switched resolution), PyAV scales
the later frames to the first frame's size with bicubic swscale, as the ffmpeg command
does (measured against Debian's ffmpeg 5.1 command on such a file: mean difference 0.15
levels, max 11, from the two swscale versions), and says how many in ``notes``. decord
and torchcodec scale such frames their own way (decord: up to 11 levels from PyAV) and
the probe cannot see the size without decoding, so for H.264/HEVC the probe compares the
sequence parameter sets (SPS) of every keyframe with the first (NAL headers only, no
decoding): if any differs, ``auto`` and the torchcodec backends use PyAV. Other codecs
that change size mid-stream are not detected.

Truncated and corrupt files
---------------------------
Opening demuxes the whole video stream once (cheap: no decoding). A file is declared
*truncated* (:class:`~vadpipe.errors.VideoDecodeError` at open time) when its container
states a frame count (MP4/MOV sample table, AVI header) or a track duration (Matroska
``DURATION`` tag, or the segment duration of a single-stream Matroska file) and the packets
actually present fall short of it by more than ``max(2 frames, 1 %)``. An MP4 whose index
(``moov`` box) is missing, which is what cutting an ordinary MP4 short gives, cannot be
opened at all and is reported as truncated too. Containers that state neither (MPEG-TS,
MPEG-PS, raw streams) cannot be checked: a truncated one decodes its first part. Damage
in the middle of a Matroska file that the demuxer skips over (lost blocks) is not
detected either.

While decoding (PyAV), a decoder error raises :class:`VideoDecodeError`, and so does
ending with fewer frames than packets by more than ``max(2 frames, 5 %)`` (the margin
allows for the few frames a decoder may legitimately drop, e.g. leading frames that
reference a missing keyframe). decord cannot report such losses (it pads with copies of
the last good frame); it raises on hard decoder errors, which are wrapped the same way.

torchcodec
----------
``backend="torchcodec"`` decodes with torchcodec's FFmpeg CPU decoder and
``backend="torchcodec-cuda"`` with NVDEC on the current CUDA device
(``VideoDecoder(path, device="cuda:N")``); both hand back host uint8 ``[t, H, W, 3]``
chunks like the other backends, so the rest of the pipeline is unchanged (NVDEC frames are
copied to the host; a later step could keep them on the GPU and resize/crop there). They
are only used when asked for: ``"auto"`` never picks them. torchcodec loads the FFmpeg
shared libraries of the system, which are usually another FFmpeg version than the one
bundled with PyAV (measured: torchcodec 0.17.0 on Debian's FFmpeg 5.1 against PyAV 18.1.0
with its FFmpeg 8), so the same bytes can decode to different pixels. Measured on the
videos of ``tests/pipeline/extract/test_decode.py`` and ``tests/pipeline/extract/test_decode_torchcodec.py``:

* bit-identical to PyAV: H.264 (with and without B-frames, 4:2:0/4:2:2/4:4:4, full range,
  BT.709 tags, odd sizes, variable frame rate, non-zero start, MP4 edit lists that hide
  pre-roll frames), HEVC, VP8, VP9, AV1, FFV1, HuffYUV, in MP4/MOV, Matroska/WebM, AVI
  and FLV; the real fixtures bikes, carphone and bigbuckbunny;
* different pixels: MS-MPEG4v3 (``vtest.avi``: ±2 levels in a few pixels from the third
  frame on, spreading over the next frames: the two FFmpeg versions' decoders differ;
  a synthetic MS-MPEG4v3 file happened to match). MPEG-1/2/4 Part 2, H.263,
  WMV and MJPEG decoded alike on the synthetic files, but their inverse DCT is not
  bit-exact by specification (only its accuracy is), so decoder versions may differ on
  them the same way;
* 10-bit ``yuv420p10le`` H.264: different RGB from the first frame on (max 48-63 levels,
  mean ~0.6);
* wrong frames: MPEG-TS and MPEG-PS (torchcodec's index starts at the wrong frame, and it
  raises part-way), AVI with B-frames (frame times are not the packet times);
* torchcodec applies a rotation stored in the container (phone videos) itself; vadpipe
  turns PyAV's frames the same way (see below) and keeps torchcodec off such files.

So a torchcodec backend decodes a file only when all of these hold, and otherwise uses
PyAV and says why in :attr:`VideoInfo.fallback_reason` (as ``"auto"`` does for decord):

1. the container is MP4/MOV, Matroska/WebM, AVI or FLV (:data:`TORCHCODEC_CONTAINERS`);
2. the codec decodes bit-exactly by specification (:data:`TORCHCODEC_CODECS`);
3. the decoded pixel format is 8-bit YUV (:data:`DECORD_PIXEL_FORMATS`), every shown
   packet has a timestamp, and the container stores no rotation;
4. torchcodec opens the file (a demux pass of its own, ``seek_mode="exact"``), counts the
   packets FFmpeg will show, reports the probed frame size, and its first frame has the
   first packet's timestamp and PyAV's pixels: bit-identical on the CPU; for NVDEC, whose
   colour conversion runs on the GPU, a mean abs difference <= 1 with at least 99 % of the
   values within ±3 (torchcodec's own CUDA tolerance). This costs one frame decoded by
   each library when the reader is opened;
5. while decoding, every frame's timestamp equals the container's, in order. A mismatch,
   or any torchcodec error, switches to PyAV at that frame (the frames already returned
   were checked) and says so in ``info``. A corrupt file thus ends with PyAV's
   :class:`~vadpipe.errors.VideoDecodeError`, as with ``backend="pyav"``.

Only the first frame's pixels are compared: a file that passes the checks but decodes to
different pixels later (as MS-MPEG4v3 does) is kept out by rule 2, not detected.
``torchcodec-cuda`` also falls back when torchcodec would decode the file on the CPU
itself (a codec or format NVDEC lacks). A missing torchcodec or FFmpeg library, or no CUDA
for ``torchcodec-cuda``, is a :class:`~vadpipe.errors.ConfigError` (:func:`check_backend`),
never a fallback.

Modules
-------
:mod:`.info` (decoder names, :class:`VideoInfo`, the PyAV demux probe, clear errors for
unreadable files), :mod:`.decord` and :mod:`.torchcodec` (when each may decode a file),
:mod:`.reader` (:class:`VideoReader`, :func:`open_video`, :func:`probe`).
"""

from __future__ import annotations

from vadpipe.pipeline.extract.decode.decord import decord_header_reason
from vadpipe.pipeline.extract.decode.info import (
    BACKENDS,
    DECODERS,
    DECORD_CONTAINERS,
    DECORD_PIXEL_FORMATS,
    TORCHCODEC_BACKENDS,
    TORCHCODEC_CODECS,
    TORCHCODEC_CONTAINERS,
    VideoInfo,
)
from vadpipe.pipeline.extract.decode.reader import MAX_CHUNK_BYTES, MIN_CHUNK_FRAMES, VideoReader, open_video, probe
from vadpipe.pipeline.extract.decode.torchcodec import check_backend

__all__ = [
    "BACKENDS",
    "DECODERS",
    "DECORD_CONTAINERS",
    "DECORD_PIXEL_FORMATS",
    "TORCHCODEC_BACKENDS",
    "TORCHCODEC_CODECS",
    "TORCHCODEC_CONTAINERS",
    "VideoInfo",
    "VideoReader",
    "check_backend",
    "decord_header_reason",
    "open_video",
    "probe",
    "MAX_CHUNK_BYTES",
    "MIN_CHUNK_FRAMES",
]
