"""Spatial preprocessing of clips: resize, multi-crop, value normalisation.

The :class:`~vadpipe.extractors.presets.ClipPreset` that drives them is bound to a backbone's
weights (:mod:`vadpipe.extractors.presets`), so features are never made with the wrong
normalisation.

Data path and layouts
---------------------
Stage one runs :func:`resize_chunk` (per frame, before clips are cut; the same pixels as
:func:`resize_clips` of the clips) in CPU worker processes and keeps the result uint8
(4x less to move than float32, and about 6x less than ten uint8 crops); the model's side
then runs :func:`crop_clips` and :func:`normalize_clips` on the GPU::

    decoder frames      uint8 [T, H, W, 3]           (RGB, channels last)
    resize_frames    -> uint8 [T, 3, h, w]
    crop_frames      -> uint8 [n_crops, T, 3, S, S]
    preprocess_clips:   uint8 [N, T, H, W, 3] -> uint8 [N, n_crops, 3, T, S, S]
                        = crop_clips(resize_clips(clips))
    resize_clips:       uint8 [N, T, H, W, 3] -> uint8 [N, 3, T, h, w]   (CPU workers)
    crop_clips:         [N, 3, T, h, w] -> [N, n_crops, 3, T, S, S]     (on the model's device)
    normalize_clips:    uint8 [..., 3, T, S, S] -> float [..., 3, T, S, S]

Resizing is done by :func:`torchvision.transforms.v2.functional.resize` directly on the
uint8 tensor, so results are identical to torchvision's for the same input. On CPUs with
AVX2/AVX512 (and on arm64) torchvision's uint8 bilinear path is a native uint8 kernel;
bicubic/lanczos are native uint8 everywhere on CPU; elsewhere (and on GPU) it resizes in
float32 and rounds. We deliberately resize in uint8 like torchvision's uint8 path: the
output is rounded to uint8, which differs from the unrounded float32 resize by at most
half a grey level plus the kernel's fixed-point error. Measured (torch 2.14.1, AVX512,
16 frames 240x320 -> 256x341, antialias): bilinear, uint8 vs float32 max 1.0 grey level,
mean 0.30 (0.0024 after mapping to ``[-1, 1]``; uint8 vs rounded float32 differs by 1 on
~19% of pixels). The uint8 bilinear result equals PIL's ``Image.resize(..., BILINEAR)``
bit for bit, and uint8 lanczos matches PIL's ``LANCZOS`` within 2 levels; torch's float32
lanczos does *not* (it leaves the ringing unclamped, up to -69..320 on noise, and differs
from PIL by up to 43 levels after clamping), so keep lanczos presets on the CPU uint8 path.

Crops
-----
The five base crops of a ``h x w`` frame with crop side ``S``:

* ``TL``: rows ``[0, S)``, columns ``[0, S)``; ``TR``: rows ``[0, S)``, columns
  ``[w - S, w)``; ``BL``: rows ``[h - S, h)``, columns ``[0, S)``; ``BR``: rows
  ``[h - S, h)``, columns ``[w - S, w)``;
* ``C``: top-left at ``(ct, cl)``, where the offsets depend on the order:
  ``torchvision``: ``ct = int(round((h - S) / 2.0))``, ``cl = int(round((w - S) / 2.0))``
  (Python's round-half-to-even, as ``torchvision`` ``center_crop``; ``wu`` rounds the same
  way); ``gowtham``: ``ct = (h - S) // 2``, ``cl = (w - S) // 2`` (integer division). The
  two agree unless ``h - S`` or ``w - S`` is odd and ``(d - 1) / 2`` is odd (d = 3, 7, 11,
  ...). :data:`~vadpipe.extractors.presets.CENTRE_ROUNDING` names the rule of each order.

Ten crops in every order are the five crops of the frame followed by the five crops of
the **horizontally flipped frame** (not the five crops each mirrored). The ``TL`` crop
of the flipped frame is the mirror image of the original ``TR`` crop, so the flipped
five are named after the region of the *original* frame whose mirror image they are:

* ``flip(X)`` = the original frame's crop ``X``, mirrored left-right. For the corners
  this is exact. ``flip(C)`` is the centre crop computed on the flipped frame, i.e. the
  mirror of the original region with top ``ct`` and left ``w - S - cl``; it equals the
  mirror of ``C`` whenever ``w - S - cl == cl`` (always when ``w - S`` is even), and is
  one column to the side otherwise. :func:`crop_boxes` gives the exact regions.

Orders (index: name), ``n_crops = 10``; ``n_crops = 5`` is the first five and
``n_crops = 1`` is ``[C]``:

``torchvision`` (``torchvision.transforms.v2.functional.ten_crop`` / ``five_crop`` /
``center_crop``, ``vertical_flip=False``)::

    0 TL  1 TR  2 BL  3 BR  4 C  5 flip(TR)  6 flip(TL)  7 flip(BR)  8 flip(BL)  9 flip(C)

``gowtham``::

    0 TL  1 TR  2 C  3 BL  4 BR  5 flip(TR)  6 flip(TL)  7 flip(C)  8 flip(BR)  9 flip(BL)

``caffe``: the ``torchvision`` indices with the ``floor`` centre offset (Caffe/C3D v1.0
``video_data_layer.cpp``: ``h_off = (height - crop_size) / 2``; C3D uses only ``C``).

``wu`` (file ``<video>__<k>.npy`` holds crop ``k``)::

    0 C  1 TL  2 TR  3 BL  4 BR  5 flip(C)  6 flip(TR)  7 flip(TL)  8 flip(BR)  9 flip(BL)

Facts behind the ``wu`` order
-----------------------------
Wu et al. did not publish their cropping code; the order is taken from their words:

* Roc-Ng/DeepMIL ``README.md`` (commit ``f11b964db1f5ed0381166d140c3c7071caa3592e``, line 8),
  UCF-Crime 10-crop I3D: "_0.npy is the center, _1~ _4.npy is the corners, and _5 ~ _9 is
  the mirrored counterparts"; Roc-Ng/XDVioDet ``README.md`` (commit
  ``f846d8cfc454943ec165bd2489b71e7dc0a1064d``, line 6), XD-Violence 5-crop: "_0.npy is the
  center, _1~ _4.npy is the corners". The published file lists spell the index with two
  underscores (XDVioDet ``list/rgb.list``, UR-DMU ``list/UCF_Train.list``: ``<video>__<k>.npy``).
* The order of the corners: Roc-Ng in XDVioDet issue #5 ("upper left, upper right, bottom
  left, bottom right and the center") — the same corner order as torchvision's
  ``five_crop`` and Gowtham's slices. Not verified against code.
* The mirrored half is taken, as torchvision's ``ten_crop`` does, as the same five crops of
  the horizontally flipped frame (``flip(C)`` first); whether Wu mirrored each crop instead
  (which would swap 6/7 and 8/9) is not verified.
* The centre offset rounds half to even: pytorch-i3d ``videotransforms.CenterCrop``
  (``int(np.round((h - th) / 2.))``), the code Wu says the features were made with
  (DeepMIL issue #2, XDVioDet issue #6).

Facts behind the ``gowtham`` order
----------------------------------
Source: GitHub ``GowthamGottimukkala/I3D_Feature_Extraction_resnet`` (an I3D-ResNet50,
2048-d, extractor whose README says it "can be used for" the RTFM paper and which RTFM
users widely use to make RTFM-style 10-crop features), file ``extract_features.py``,
functions ``load_frame``, ``oversample_data`` and ``run``; ``main.py`` drives it with
``sample_mode="oversample"`` by default (read at commit
``096dccb0e670bd6b2cfc10a684089942c417d59b``):

* frames are first dumped by ffmpeg to JPEG files (``ffmpeg -i video %d.jpg``, lossy
  re-encoding we do not reproduce), read with PIL (RGB) and resized with
  ``Image.resize((340, 256), Image.ANTIALIAS)``: width 340, height 256, aspect ignored,
  PIL ``ANTIALIAS`` = Lanczos. Values are mapped with ``x * 2 / 255 - 1`` to ``[-1, 1]``.
  torchvision's tensor Lanczos resize matches PIL's to within 1-2 grey levels (mean
  ~1e-2 level on noise), hence ``interpolation="lanczos"`` in
  :data:`GOWTHAM_RTFM_PRESET`.
* ``oversample_data`` on data ``[b, t, h, w, c]``: ``data_flip = data[:, :, :, ::-1, :]``
  (the whole frame flipped left-right), then from ``data`` the crops
  ``[:224, :224]`` (TL), ``[:224, -224:]`` (TR), ``[16:240, 58:282]`` (C),
  ``[-224:, :224]`` (BL), ``[-224:, -224:]`` (BR), then the same five slices taken from
  ``data_flip``, returned in that order (10 crops). The centre slice is hard-coded for a
  256x340 frame; ``16 = (256 - 224) // 2`` and ``58 = (340 - 224) // 2``, which we
  generalise as integer division, as ``v-iashin/video_features``
  (``models/i3d/transforms/transforms.py``, ``TensorCenterCrop``) does. Because 340 - 224
  is even, the flipped centre there is exactly the mirrored centre crop.
* ``sample_mode='center_crop'`` uses only ``[16:240, 58:282]`` (our ``n_crops=1``); the
  extractor has no 5-crop mode (our ``n_crops=5`` is the first five of the order).
* clips (``run``): ``chunk_size = 16`` frames at a step of ``frequency`` (default 16),
  ``(n - 16) // frequency + 1`` clips, i.e. the ``"drop"`` tail policy; it asserts
  ``n > 16``. Frame files are ordered with ``natsorted``; an older revision of the file
  (commit ``eabeb348611fd6a7745f7f7be402149744d8bf93``, centre crop only) sorted them
  with ``list.sort()``, i.e. lexicographically (``1.jpg, 10.jpg, 100.jpg, ...``), which
  scrambles the temporal order of videos with more than 10 frames.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from vadpipe.errors import ConfigError
from vadpipe.extractors.presets import BASE_ORDER, CENTRE_ROUNDING, ClipPreset, check_n_crops, check_order


def _centre_offset(diff: int, order: str) -> int:
    """Offset of the centre crop along a side with ``diff = side - S`` spare pixels (:data:`CENTRE_ROUNDING`)."""
    return int(round(diff / 2.0)) if CENTRE_ROUNDING[order] == "half-even" else diff // 2


def crop_boxes(
    height: int, width: int, crop_size: int, order: str, n_crops: int
) -> list[tuple[int, int, bool]]:
    """Where each crop comes from, in original-frame coordinates.

    Returns one ``(top, left, mirrored)`` per crop index: the crop is
    ``frame[top:top + S, left:left + S]``, mirrored left-right if ``mirrored``.

    Raises:
        ConfigError: if the crop is larger than the frame, or on a bad order/n_crops.
    """
    check_order(order)
    check_n_crops(n_crops)
    s = crop_size
    if s > height or s > width:
        raise ConfigError(
            f"crop size {s} is larger than the frame ({height}x{width}); resize the frames so "
            f"both sides are >= {s} or use a smaller crop_size"
        )
    dh, dw = height - s, width - s
    ct, cl = _centre_offset(dh, order), _centre_offset(dw, order)
    # Crops of a frame of these dimensions, before flipping.
    pos = {"TL": (0, 0), "TR": (0, dw), "BL": (dh, 0), "BR": (dh, dw), "C": (ct, cl)}
    if n_crops == 1:
        return [(ct, cl, False)]
    base = BASE_ORDER[order]
    boxes = [(*pos[name], False) for name in base]
    if n_crops == 10:
        # Crop of the flipped frame at left L is the mirror of columns [dw - L, dw - L + S).
        boxes += [(pos[name][0], dw - pos[name][1], True) for name in base]
    return boxes


def _check_uint8(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.uint8:
        raise TypeError(f"{what} must be uint8, got {x.dtype}")


def resize_frames(frames: torch.Tensor, preset: ClipPreset) -> torch.Tensor:
    """Resize decoded frames.

    Args:
        frames: uint8 ``[T, H, W, 3]`` (channels last, as decoders give).
        preset: ``preset.resize`` (short side or exact ``(h, w)``), ``interpolation``
            and ``antialias`` are used.

    Returns:
        uint8 ``[T, 3, h, w]`` with ``(h, w) = preset.resized_size(H, W)``; exactly
        ``torchvision.transforms.v2.functional.resize`` of ``frames.permute(0, 3, 1, 2)``.
        The result is stored channels-last (``torch.channels_last`` strides), which is
        what torchvision's fast uint8 kernels produce; it is a view of ``frames`` if no
        resize is needed.
    """
    _check_uint8(frames, "frames")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got shape {tuple(frames.shape)}")
    x = frames.permute(0, 3, 1, 2)
    size = list(preset.resize) if isinstance(preset.resize, tuple) else [preset.resize]
    mode = TF.InterpolationMode(preset.interpolation)
    return TF.resize(x, size=size, interpolation=mode, antialias=preset.antialias)


def _copy_crops(
    out_k: Callable[[int], torch.Tensor],
    frames: torch.Tensor,
    boxes: list[tuple[int, int, bool]],
    s: int,
) -> None:
    """``out_k(k).copy_(crop k of frames)`` for every box (crops on the last two dims)."""
    for k, (top, left, mirrored) in enumerate(boxes):
        region = frames[..., top : top + s, left : left + s]
        out_k(k).copy_(region.flip(-1) if mirrored else region)


def crop_frames(frames: torch.Tensor, preset: ClipPreset, n_crops: int) -> torch.Tensor:
    """Multi-crop resized frames.

    Args:
        frames: ``[T, 3, h, w]`` (any dtype; uint8 from :func:`resize_frames`).
        preset: ``crop_size`` and ``crop_order`` are used.
        n_crops: 1 (centre), 5 (five crops) or 10 (five crops of the frame and five of
            the horizontally flipped frame); order and names in the module docstring and
            :func:`crop_names`.

    Returns:
        ``[n_crops, T, 3, S, S]``, contiguous, same dtype. With ``crop_order="torchvision"``
        crop ``k`` equals ``torchvision.transforms.v2.functional.ten_crop(frames, S)[k]``
        (``five_crop`` for 5, ``center_crop`` for 1).

    Raises:
        ConfigError: if ``S`` is larger than ``h`` or ``w``, or ``n_crops`` is invalid.
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [T, 3, h, w], got shape {tuple(frames.shape)}")
    s = preset.crop_size
    h, w = frames.shape[-2:]
    boxes = crop_boxes(h, w, s, preset.crop_order, n_crops)
    out = torch.empty((n_crops, *frames.shape[:-2], s, s), dtype=frames.dtype, device=frames.device)
    _copy_crops(out.__getitem__, frames, boxes, s)
    return out


def resize_clips(clips: torch.Tensor, preset: ClipPreset) -> torch.Tensor:
    """Resize a batch of clips, staying uint8 (the CPU-worker half of preprocessing).

    Args:
        clips: uint8 ``[N, T, H, W, 3]`` (e.g. stacked :func:`~vadpipe.pipeline.extract.clips.iter_clips`
            output via ``torch.from_numpy``).
        preset: the backbone's preset (resize, interpolation, antialias).

    Returns:
        uint8 ``[N, 3, T, h, w]``, contiguous (channels first, the 3D-CNN layout), with
        ``(h, w) = preset.resized_size(H, W)``. Frame ``t`` of clip ``i`` equals
        :func:`resize_frames` of that frame.

    Raises:
        ConfigError: if the crop would not fit in the resized frame.
    """
    _check_uint8(clips, "clips")
    if clips.ndim != 5 or clips.shape[-1] != 3:
        raise ValueError(f"clips must be [N, T, H, W, 3], got shape {tuple(clips.shape)}")
    n, t, height, width, _ = clips.shape
    h, w = preset.resized_size(height, width)
    crop_boxes(h, w, preset.crop_size, preset.crop_order, 1)  # raises before the resize
    resized = resize_frames(clips.reshape(n * t, height, width, 3), preset)
    # One copy to [N, 3, T, h, w] (channels first) makes every later crop copy a run of
    # contiguous rows; measured ~1.7x faster than cropping the channels-last frames.
    return resized.reshape(n, t, 3, h, w).permute(0, 2, 1, 3, 4).contiguous()


def resize_chunk(frames: np.ndarray, preset: ClipPreset) -> np.ndarray:
    """Resize a chunk of decoded frames, staying uint8 and channels last: the workers' path,
    which resizes every frame once, before clips are cut (so a clip of 4K frames is never
    held at full size, and overlapping clips do not resize their shared frames again).

    Args:
        frames: uint8 ``[t, H, W, 3]`` from a decoder.
        preset: the backbone's preset.

    Returns:
        uint8 ``[t, h, w, 3]``, C-contiguous, with ``(h, w) = preset.resized_size(H, W)``:
        frame ``i`` equals :func:`resize_frames` of frame ``i`` (channels last), so clips
        cut from these chunks and stacked by :func:`stack_resized` equal
        :func:`resize_clips` of the full-size clips.

    Raises:
        ConfigError: if the crop would not fit in the resized frame.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [t, H, W, 3], got shape {tuple(frames.shape)}")
    h, w = preset.resized_size(frames.shape[1], frames.shape[2])
    crop_boxes(h, w, preset.crop_size, preset.crop_order, 1)  # raises before the resize
    resized = resize_frames(torch.from_numpy(np.ascontiguousarray(frames)), preset)  # [t, 3, h, w]
    return np.ascontiguousarray(resized.permute(0, 2, 3, 1).numpy())  # no copy: channels-last storage


def stack_resized(clips: list[np.ndarray]) -> torch.Tensor:
    """Clips ``[T, h, w, 3]`` cut from :func:`resize_chunk` output to the batch layout of
    :func:`resize_clips`: uint8 ``[N, 3, T, h, w]``, contiguous."""
    return torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).contiguous()


def crop_clips(resized: torch.Tensor, preset: ClipPreset, n_crops: int) -> torch.Tensor:
    """Multi-crop resized clips (cheap slicing: runs on the GPU in stage one).

    Args:
        resized: ``[N, 3, T, h, w]`` from :func:`resize_clips`, on any device.
        preset: ``crop_size`` and ``crop_order`` are used.
        n_crops: 1, 5 or 10 (order in the module docstring).

    Returns:
        ``[N, n_crops, 3, T, S, S]``, contiguous, same dtype and device.
    """
    if resized.ndim != 5 or resized.shape[1] != 3:
        raise ValueError(f"resized must be [N, 3, T, h, w], got shape {tuple(resized.shape)}")
    n, _, t, h, w = resized.shape
    s = preset.crop_size
    boxes = crop_boxes(h, w, s, preset.crop_order, n_crops)
    out = torch.empty((n, n_crops, 3, t, s, s), dtype=resized.dtype, device=resized.device)
    _copy_crops(lambda k: out[:, k], resized, boxes, s)
    return out


def preprocess_clips(clips: torch.Tensor, preset: ClipPreset, n_crops: int) -> torch.Tensor:
    """Resize and multi-crop a batch of clips, staying uint8.

    Args:
        clips: uint8 ``[N, T, H, W, 3]``.
        preset: the backbone's preset.
        n_crops: 1, 5 or 10.

    Returns:
        uint8 ``[N, n_crops, 3, T, S, S]``, contiguous: ``out[i, k]`` is crop ``k`` of clip
        ``i`` in the ``[3, T, S, S]`` layout 3D CNNs take. Equal to
        ``crop_frames(resize_frames(clips[i], preset), preset, n_crops)[k]`` permuted
        to channels-first; the composition of :func:`resize_clips` and :func:`crop_clips`.
        Pass it to :func:`normalize_clips` for the float network input.
    """
    return crop_clips(resize_clips(clips, preset), preset, n_crops)


def normalize_clips(
    x: torch.Tensor, preset: ClipPreset, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Map uint8 clips to the network's float input.

    Args:
        x: uint8 ``[..., 3, T, S, S]`` (channels at dim ``-4``), on any device.
        preset: ``value_range``: ``x / 255 * (hi - lo) + lo`` (exactly ``lo`` at 0 and
            ``hi`` at 255 for ``(-1, 1)`` and ``(0, 1)``); otherwise
            ``(x / 255 - mean[c]) / std[c]``. With ``bgr`` the channel order is reversed
            first (mean/std are then in BGR order).
        dtype: floating output dtype.

    Returns:
        ``dtype`` tensor of ``x``'s shape on ``x``'s device. The conversion allocates the
        output once; the channel swap happens during the conversion and the arithmetic
        is in place.
    """
    _check_uint8(x, "x")
    if x.ndim < 4 or x.shape[-4] != 3:
        raise ValueError(f"x must be [..., 3, T, S, S], got shape {tuple(x.shape)}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    if preset.bgr:
        y = torch.empty(x.shape, dtype=dtype, device=x.device)
        for c in range(3):
            y.select(-4, c).copy_(x.select(-4, 2 - c))
    else:
        y = x.to(dtype)
    y.div_(255.0)
    if preset.value_range is not None:
        lo, hi = preset.value_range
        if hi - lo != 1.0:
            y.mul_(hi - lo)
        if lo != 0.0:
            y.add_(lo)
        return y
    mean = torch.tensor(preset.mean, dtype=dtype, device=x.device).view(3, 1, 1, 1)
    std = torch.tensor(preset.std, dtype=dtype, device=x.device).view(3, 1, 1, 1)
    return y.sub_(mean).div_(std)
