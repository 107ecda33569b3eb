"""Tests of vadpipe.pipeline.extract.transforms: presets, resize, multi-crop, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from vadpipe.errors import ConfigError
from vadpipe.extractors.presets import CROP_ORDERS, GOWTHAM_RTFM_PRESET, KINETICS_I3D_PRESET, ClipPreset, crop_names
from vadpipe.pipeline.extract.transforms import (
    crop_boxes,
    crop_frames,
    normalize_clips,
    preprocess_clips,
    resize_frames,
)


def _coord_frames(t, h, w):
    """uint8 [t, 3, h, w]: channel 0 = row y, channel 1 = column x, channel 2 = frame."""
    y = torch.arange(h, dtype=torch.uint8).view(1, h, 1).expand(t, h, w)
    x = torch.arange(w, dtype=torch.uint8).view(1, 1, w).expand(t, h, w)
    f = torch.arange(t, dtype=torch.uint8).view(t, 1, 1).expand(t, h, w)
    return torch.stack([y, x, f], dim=1).contiguous()


def _read_box(crop):
    """(top, left, mirrored) of a crop [T, 3, S, S] of _coord_frames."""
    top = int(crop[0, 0, 0, 0])
    row = crop[0, 1, 0].tolist()
    mirrored = row[0] > row[-1]
    s = crop.shape[-1]
    ys = crop[0, 0, :, 0].tolist()
    assert ys == list(range(top, top + s)), "rows not contiguous"
    left = min(row)
    assert row == (list(range(left, left + s))[::-1] if mirrored else list(range(left, left + s)))
    assert crop[:, 2, 0, 0].tolist() == list(range(crop.shape[0])), "frames reordered"
    return top, left, mirrored


def _preset(order, crop=6, resize=6):
    return ClipPreset(resize=resize, crop_size=crop, crop_order=order)


# Hand-computed crop regions (top, left, mirrored) in original-frame coordinates, crop 6.
# 10x12: dh=4, dw=6 (even): centre (2, 3) in both orders, flip(C) is the mirrored centre.
# 9x11: dh=3, dw=5: torchvision centre (round(1.5)=2, round(2.5)=2); flipped-frame centre
#   at left 2 is original left 5 - 2 = 3. gowtham centre (3 // 2, 5 // 2) = (1, 2); flipped
#   centre left 5 - 2 = 3.
# 13x10: dh=7, dw=4: torchvision centre (round(3.5)=4, 2); gowtham (3, 2).
HAND = {
    (10, 12, "torchvision"): {
        "TL": (0, 0, False), "TR": (0, 6, False), "BL": (4, 0, False), "BR": (4, 6, False),
        "C": (2, 3, False), "flip(TR)": (0, 6, True), "flip(TL)": (0, 0, True),
        "flip(BR)": (4, 6, True), "flip(BL)": (4, 0, True), "flip(C)": (2, 3, True),
    },
    (9, 11, "torchvision"): {
        "TL": (0, 0, False), "TR": (0, 5, False), "BL": (3, 0, False), "BR": (3, 5, False),
        "C": (2, 2, False), "flip(TR)": (0, 5, True), "flip(TL)": (0, 0, True),
        "flip(BR)": (3, 5, True), "flip(BL)": (3, 0, True), "flip(C)": (2, 3, True),
    },
    (9, 11, "gowtham"): {
        "TL": (0, 0, False), "TR": (0, 5, False), "C": (1, 2, False), "BL": (3, 0, False),
        "BR": (3, 5, False), "flip(TR)": (0, 5, True), "flip(TL)": (0, 0, True),
        "flip(C)": (1, 3, True), "flip(BR)": (3, 5, True), "flip(BL)": (3, 0, True),
    },
    (13, 10, "torchvision"): {"C": (4, 2, False), "flip(C)": (4, 2, True)},
    (13, 10, "gowtham"): {"C": (3, 2, False), "flip(C)": (3, 2, True)},
}


@pytest.mark.parametrize("key", list(HAND))
def test_crop_geometry_hand_computed(key):
    h, w, order = key
    frames = _coord_frames(3, h, w)
    crops = crop_frames(frames, _preset(order), 10)
    assert crops.shape == (10, 3, 3, 6, 6) and crops.dtype == torch.uint8
    names = crop_names(order, 10)
    got = {name: _read_box(crops[k]) for k, name in enumerate(names)}
    for name, box in HAND[key].items():
        assert got[name] == box, (name, got[name], box)
    assert [got[n] for n in names] == crop_boxes(h, w, 6, order, 10)


def test_crop_names():
    assert crop_names("torchvision", 10) == [
        "TL", "TR", "BL", "BR", "C", "flip(TR)", "flip(TL)", "flip(BR)", "flip(BL)", "flip(C)"
    ]
    assert crop_names("gowtham", 10) == [
        "TL", "TR", "C", "BL", "BR", "flip(TR)", "flip(TL)", "flip(C)", "flip(BR)", "flip(BL)"
    ]
    assert crop_names("gowtham", 5) == ["TL", "TR", "C", "BL", "BR"]
    assert crop_names("torchvision", 1) == ["C"] == KINETICS_I3D_PRESET.crop_names(1)
    with pytest.raises(ConfigError, match="1, 5, 10"):
        crop_names("torchvision", 3)
    with pytest.raises(ConfigError, match="'torchvision', 'gowtham'"):
        crop_names("tencrop", 10)


@pytest.mark.parametrize("order", CROP_ORDERS)
@pytest.mark.parametrize("n_crops", [1, 5])
def test_fewer_crops_are_a_prefix(order, n_crops):
    frames = _coord_frames(2, 9, 11)
    ten = crop_frames(frames, _preset(order), 10)
    few = crop_frames(frames, _preset(order), n_crops)
    if n_crops == 5:
        assert torch.equal(few, ten[:5])
    else:
        assert torch.equal(few[0], ten[crop_names(order, 10).index("C")])


@pytest.mark.parametrize("hw", [(8, 8), (9, 11), (10, 13), (14, 9), (12, 12)])
def test_torchvision_order_equals_torchvision(hw):
    g = torch.Generator().manual_seed(hw[0] * 100 + hw[1])
    frames = torch.randint(0, 256, (2, 3, *hw), dtype=torch.uint8, generator=g)
    preset = _preset("torchvision", crop=6)
    ten = crop_frames(frames, preset, 10)
    for k, ref in enumerate(TF.ten_crop(frames, [6, 6])):
        assert torch.equal(ten[k], ref), k
    five = crop_frames(frames, preset, 5)
    for k, ref in enumerate(TF.five_crop(frames, [6, 6])):
        assert torch.equal(five[k], ref), k
    assert torch.equal(crop_frames(frames, preset, 1)[0], TF.center_crop(frames, [6, 6]))


def _gowtham_reference(data):
    """Transcription of the slices in oversample_data (extract_features.py), S = 224,
    on numpy data [b, t, 256, 340, c]."""
    flip = np.array(data[:, :, :, ::-1, :])
    slices = [
        (slice(None, 224), slice(None, 224)),
        (slice(None, 224), slice(-224, None)),
        (slice(16, 240), slice(58, 282)),
        (slice(-224, None), slice(None, 224)),
        (slice(-224, None), slice(-224, None)),
    ]
    return [src[:, :, ys, xs, :] for src in (data, flip) for ys, xs in slices]


def test_gowtham_order_equals_reference_slices():
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, (2, 2, 256, 340, 3), dtype=np.uint8)  # already 256x340
    out = preprocess_clips(torch.from_numpy(data), GOWTHAM_RTFM_PRESET, 10)
    assert out.shape == (2, 10, 3, 2, 224, 224)
    for k, ref in enumerate(_gowtham_reference(data)):
        # ours: [N, 3, T, S, S]; reference: [b, t, S, S, c]
        assert np.array_equal(out[:, k].permute(0, 2, 3, 4, 1).numpy(), ref), k
    centre = preprocess_clips(torch.from_numpy(data), GOWTHAM_RTFM_PRESET, 1)
    assert np.array_equal(
        centre[:, 0].permute(0, 2, 3, 4, 1).numpy(), data[:, :, 16:240, 58:282, :]
    )


def test_gowtham_preset_resize_matches_pil_lanczos():
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(4)
    frame = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    ours = resize_frames(torch.from_numpy(frame)[None], GOWTHAM_RTFM_PRESET)[0]
    pil = np.asarray(Image.fromarray(frame).resize((340, 256), Image.LANCZOS))
    diff = np.abs(ours.permute(1, 2, 0).numpy().astype(int) - pil.astype(int))
    assert ours.shape == (3, 256, 340)
    assert diff.max() <= 2 and diff.mean() < 0.1


def test_crop_larger_than_frame_raises_at_crop_time():
    with pytest.raises(ConfigError, match="larger than the frame"):
        crop_frames(_coord_frames(1, 5, 9), _preset("torchvision", crop=6), 10)
    with pytest.raises(ConfigError, match="larger than the frame"):
        crop_boxes(9, 5, 6, "gowtham", 1)


# ---------------------------------------------------------------------------- resize


@pytest.mark.parametrize(
    "resize, interpolation, hw, out_hw",
    [
        (16, "bilinear", (24, 32), (16, 21)),
        (16, "bilinear", (32, 24), (21, 16)),
        (16, "bilinear", (20, 20), (16, 16)),
        (40, "bilinear", (24, 30), (40, 50)),  # upscaling
        ((16, 22), "bilinear", (24, 32), (16, 22)),
        ((16, 22), "lanczos", (30, 20), (16, 22)),
        (18, "bicubic", (24, 32), (18, 24)),
    ],
)
def test_resize_equals_torchvision(resize, interpolation, hw, out_hw):
    g = torch.Generator().manual_seed(7)
    frames = torch.randint(0, 256, (3, *hw, 3), dtype=torch.uint8, generator=g)
    preset = ClipPreset(resize=resize, crop_size=8, interpolation=interpolation)
    out = resize_frames(frames, preset)
    chw = frames.permute(0, 3, 1, 2)
    size = list(resize) if isinstance(resize, tuple) else resize
    mode = TF.InterpolationMode(interpolation)
    ref = TF.resize(chw, size=size, interpolation=mode, antialias=True)
    assert out.shape == (3, 3, *out_hw) and out.dtype == torch.uint8
    assert preset.resized_size(*hw) == out_hw
    assert torch.equal(out, ref)
    if interpolation == "bilinear":
        assert torch.equal(out[1], TF.resize(chw[1], size=size, antialias=True))


def test_resize_without_antialias():
    frames = torch.randint(0, 256, (2, 24, 32, 3), dtype=torch.uint8)
    preset = ClipPreset(resize=12, crop_size=8, antialias=False)
    ref = TF.resize(frames.permute(0, 3, 1, 2), size=12, antialias=False)
    assert torch.equal(resize_frames(frames, preset), ref)


def test_resize_input_checks():
    with pytest.raises(TypeError, match="uint8"):
        resize_frames(torch.zeros(1, 8, 8, 3), KINETICS_I3D_PRESET)
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        resize_frames(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), KINETICS_I3D_PRESET)


# ---------------------------------------------------------------------------- preprocess


@pytest.mark.parametrize("order", CROP_ORDERS)
@pytest.mark.parametrize("n_crops", [1, 5, 10])
def test_preprocess_shapes_and_consistency(order, n_crops):
    g = torch.Generator().manual_seed(n_crops)
    clips = torch.randint(0, 256, (2, 4, 15, 20, 3), dtype=torch.uint8, generator=g)
    preset = ClipPreset(resize=12, crop_size=10, crop_order=order)
    out = preprocess_clips(clips, preset, n_crops)
    assert out.shape == (2, n_crops, 3, 4, 10, 10)
    assert out.dtype == torch.uint8 and out.is_contiguous()
    for i in range(2):
        ref = crop_frames(resize_frames(clips[i], preset), preset, n_crops)  # [k, T, 3, S, S]
        assert torch.equal(out[i], ref.permute(0, 2, 1, 3, 4))


def test_preprocess_keeps_coordinates():
    """No resize needed: crops of coordinate frames land at the hand-computed boxes."""
    frames = _coord_frames(4, 9, 11).permute(0, 2, 3, 1)  # [T, H, W, 3]
    clips = torch.stack([frames, frames])
    preset = ClipPreset(resize=(9, 11), crop_size=6, crop_order="gowtham")
    out = preprocess_clips(clips, preset, 10)
    for k, name in enumerate(crop_names("gowtham", 10)):
        crop = out[1, k].permute(1, 0, 2, 3)  # [T, 3, S, S]
        assert _read_box(crop) == HAND[(9, 11, "gowtham")][name]


def test_preprocess_input_checks():
    with pytest.raises(ValueError, match=r"\[N, T, H, W, 3\]"):
        preprocess_clips(torch.zeros(4, 8, 8, 3, dtype=torch.uint8), KINETICS_I3D_PRESET, 1)
    with pytest.raises(ConfigError, match="n_crops"):
        preprocess_clips(torch.zeros(1, 2, 8, 8, 3, dtype=torch.uint8), _preset("gowtham"), 2)


# ---------------------------------------------------------------------------- normalize


def test_normalize_value_range_exact_ends():
    x = torch.tensor([0, 1, 128, 254, 255], dtype=torch.uint8).view(1, 1, 5, 1, 1).expand(
        2, 3, 5, 1, 1
    )
    y = normalize_clips(x, KINETICS_I3D_PRESET)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert y[0, 0, 0].item() == -1.0 and y[0, 0, -1].item() == 1.0
    assert torch.allclose(y, x.double().div(255).mul(2).sub(1).float(), atol=1e-6)
    y01 = normalize_clips(x, ClipPreset(value_range=(0.0, 1.0)), dtype=torch.float64)
    assert y01.dtype == torch.float64
    assert y01.min().item() == 0.0 and y01.max().item() == 1.0
    half = normalize_clips(x, KINETICS_I3D_PRESET, dtype=torch.float16)
    assert half.dtype == torch.float16 and half.min() == -1 and half.max() == 1


def test_normalize_mean_std_and_bgr():
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (2, 3, 3, 4, 4), dtype=torch.uint8, generator=g)
    x_before = x.clone()
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    preset = ClipPreset(value_range=None, mean=mean, std=std)
    y = normalize_clips(x, preset)
    mean_t = torch.tensor(mean, dtype=torch.float64).view(3, 1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float64).view(3, 1, 1, 1)
    ref = (x.double() / 255 - mean_t) / std_t
    assert torch.allclose(y.double(), ref, atol=1e-5)
    bgr = normalize_clips(x, ClipPreset(value_range=None, mean=mean, std=std, bgr=True))
    ref_bgr = (x.flip(-4).double() / 255 - mean_t) / std_t
    assert torch.allclose(bgr.double(), ref_bgr, atol=1e-5)
    vr_bgr = normalize_clips(x, ClipPreset(bgr=True))
    assert torch.equal(vr_bgr, normalize_clips(x.flip(-4), KINETICS_I3D_PRESET))
    assert torch.equal(x, x_before)  # input untouched


def test_normalize_checks():
    with pytest.raises(TypeError, match="uint8"):
        normalize_clips(torch.zeros(3, 2, 4, 4), KINETICS_I3D_PRESET)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, T, S, S\]"):
        normalize_clips(torch.zeros(2, 4, 4, 4, dtype=torch.uint8), KINETICS_I3D_PRESET)
    with pytest.raises(TypeError, match="floating"):
        x = torch.zeros(3, 2, 4, 4, dtype=torch.uint8)
        normalize_clips(x, KINETICS_I3D_PRESET, torch.int32)


# ---------------------------------------------------------------------------- presets


def test_named_presets():
    assert KINETICS_I3D_PRESET == ClipPreset(
        resize=256, crop_size=224, crop_order="torchvision", value_range=(-1.0, 1.0)
    )
    assert GOWTHAM_RTFM_PRESET.resize == (256, 340)
    assert GOWTHAM_RTFM_PRESET.crop_order == "gowtham"
    assert GOWTHAM_RTFM_PRESET.value_range == (-1.0, 1.0)
    assert GOWTHAM_RTFM_PRESET.interpolation == "lanczos" and not GOWTHAM_RTFM_PRESET.bgr
    assert GOWTHAM_RTFM_PRESET.resized_size(240, 320) == (256, 340)
    assert KINETICS_I3D_PRESET.resized_size(240, 320) == (256, 341)


def test_preset_list_resize_normalised_to_tuple():
    assert ClipPreset(resize=[256, 340]).resize == (256, 340)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"crop_size": 300}, "crop_size must be <= 256"),
        ({"resize": (200, 300)}, "crop_size must be <= 200"),
        ({"resize": 0}, "resize must be an int >= 1"),
        ({"resize": (256,)}, "resize must be"),
        ({"resize": 256.0}, "resize must be"),
        ({"crop_size": 0}, "crop_size must be an int >= 1"),
        ({"crop_order": "tencrop"}, "'torchvision', 'gowtham'"),
        ({"interpolation": "nearest"}, "'bilinear', 'bicubic', 'lanczos'"),
        ({"interpolation": "lanczos", "antialias": False}, "requires antialias=True"),
        ({"mean": (0.5, 0.5, 0.5), "std": (0.2, 0.2, 0.2)}, "mutually exclusive"),
        ({"value_range": None}, "value_range=\\(lo, hi\\) or mean and std"),
        ({"value_range": None, "mean": (0.5, 0.5, 0.5)}, "std must be 3 numbers"),
        ({"value_range": None, "mean": (0.5, 0.5), "std": (1, 1, 1)}, "mean must be 3"),
        ({"value_range": None, "mean": (0, 0, 0), "std": (1, 0, 1)}, "std must be > 0"),
        ({"value_range": (1.0, -1.0)}, "lo < hi"),
        ({"value_range": (0.0,)}, "pair"),
        ({"bgr": 1}, "True or False"),
    ],
)
def test_preset_validation(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        ClipPreset(**kwargs)
