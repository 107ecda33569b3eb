"""Named recipes of the public feature sets, checked on real frames against independent
re-implementations of each extractor's published rules (docs/recipes.md gives the sources).

The references below use only PyAV (decoding), PIL and NumPy, never vadpipe's transforms:

* ``rtfm-i3d-r50-10crop``: Gowtham's ``extract_features.py`` (``load_frame``: PIL
  ``resize((340, 256), ANTIALIAS)``, ``x * 2 / 255 - 1``; ``oversample_data``: the five
  hard-coded slices of the frame, then of the flipped frame; ``run``: clips start every 16
  frames while ``start + 16 <= n``);
* ``wu-i3d-10crop`` / ``xd-i3d-5crop``: pytorch-i3d's ``load_rgb_frames`` rule with the
  short side resized to 256 (OpenCV bilinear ``INTER_LINEAR``, no antialiasing, half-pixel
  centres), ``(x / 255) * 2 - 1``; ``videotransforms.CenterCrop`` offsets
  ``int(np.round((h - 224) / 2))``; file ``__0`` centre, ``__1..__4`` TL, TR, BL, BR, then the
  same five of the mirrored frame; UCF-Crime: ``n // 16`` clips; XD-Violence: ``(n - 1) // 16``
  clips (``list/make_gt.py``);
* ``sultani-c3d``: C3D v1.0 ``cv::resize(img, Size(171, 128))`` (bilinear, no antialiasing),
  centre crop at ``((128 - 112) // 2, (171 - 112) // 2)``, BGR minus the Sports-1M mean,
  ``n // 16`` clips of 16 frames.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.shared_data import shared_fixture
from vadpipe.errors import ConfigError
from vadpipe.extractors.presets import RECIPE_ALIASES, RECIPES, get_recipe
from vadpipe.extractors.registry import get_backbone
from vadpipe.pipeline.extract.clips import clip_frame_ranges, iter_clips
from vadpipe.pipeline.extract.config import ExtractConfig, recipe_config
from vadpipe.pipeline.extract.transforms import crop_clips, normalize_clips, resize_chunk, stack_resized

CLIP = 16
CROP = 224
#: One uint8 grey level after mapping [0, 255] onto [-1, 1].
LEVEL = 2.0 / 255.0
#: Sports-1M mean pixel, BGR (the per-channel values widely used for C3D's mean cube).
C3D_BGR_MEAN = np.array([90.25, 97.66, 101.41])
CHUNK = 7  # decode-chunk size fed to the streaming path (clips straddle chunks)


def _decode(rel: str, n: int) -> np.ndarray:
    """The first ``n`` frames of a fixture video, RGB uint8 ``[n, H, W, 3]`` (PyAV directly)."""
    import av

    path = shared_fixture(rel)
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == n:
                break
    assert len(frames) == n, f"{rel} has fewer than {n} frames"
    return np.stack(frames)


def _config(name: str) -> ExtractConfig:
    recipe = get_recipe(name)
    spec = get_backbone(recipe.backbone)
    return recipe_config(name, backbone=spec.name, backbone_preset=spec.preset, backbone_clip_len=spec.clip_len)


def _vadpipe_clips(frames: np.ndarray, config: ExtractConfig) -> np.ndarray:
    """vadpipe's network input for ``frames`` under ``config``: float64 ``[n_clips, crops, T, S, S, 3]``
    (the stage-one path: per-chunk resize, clips, crops, value mapping; channels last here)."""
    chunks = (resize_chunk(frames[i:i + CHUNK], config.preset) for i in range(0, len(frames), CHUNK))
    clips = list(iter_clips(chunks, config.clip))
    if not clips:
        return np.zeros((0, config.crops, CLIP, 1, 1, 3))
    x = normalize_clips(crop_clips(stack_resized(clips), config.preset, config.crops), config.preset)
    return x.permute(0, 1, 3, 4, 5, 2).double().numpy()  # [N, crops, 3, T, S, S] -> [N, crops, T, S, S, 3]


def _bilinear(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV ``INTER_LINEAR`` to an explicit size: half-pixel centres, edge clamping, no
    antialiasing; float64 result rounded to uint8."""
    src_h, src_w = frame.shape[:2]

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), pos - lo

    y0, y1, wy = axis(height, src_h)
    x0, x1, wx = axis(width, src_w)
    f = frame.astype(np.float64)
    top = f[y0][:, x0] * (1 - wx)[None, :, None] + f[y0][:, x1] * wx[None, :, None]
    bottom = f[y1][:, x0] * (1 - wx)[None, :, None] + f[y1][:, x1] * wx[None, :, None]
    out = top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _five(frame: np.ndarray, boxes: list[tuple[int, int]]) -> list[np.ndarray]:
    return [frame[t:t + CROP, left:left + CROP] for t, left in boxes]


# ----------------------------------------------------------------------------- references


def _gowtham_reference(frames: np.ndarray) -> tuple[list[int], np.ndarray]:
    n = len(frames)
    starts = [i * CLIP for i in range(((n - CLIP) // CLIP * CLIP) // CLIP + 1)]
    resized = np.stack([np.asarray(Image.fromarray(f).resize((340, 256), Image.LANCZOS)) for f in frames])
    data = resized.astype(np.float64) * 2 / 255 - 1
    out = []
    for s in starts:
        clip = data[s:s + CLIP]
        flip = clip[:, :, ::-1]
        crops = []
        for d in (clip, flip):
            crops += [d[:, :224, :224], d[:, :224, -224:], d[:, 16:240, 58:282], d[:, -224:, :224], d[:, -224:, -224:]]
        out.append(np.stack(crops))
    return starts, np.stack(out)


def _wu_reference(frames: np.ndarray, n_crops: int, n_used: int) -> tuple[list[int], np.ndarray]:
    starts = [i * CLIP for i in range(n_used // CLIP)]
    h, w = frames.shape[1:3]
    short = min(h, w)
    new_h, new_w = (256, int(w * 256 / short)) if h <= w else (int(h * 256 / short), 256)
    resized = np.stack([_bilinear(f, new_h, new_w) for f in frames[:n_used]])
    data = (resized / 255.0) * 2 - 1
    ct, cl = int(np.round((new_h - CROP) / 2.0)), int(np.round((new_w - CROP) / 2.0))
    dh, dw = new_h - CROP, new_w - CROP
    boxes = [(ct, cl), (0, 0), (0, dw), (dh, 0), (dh, dw)]  # __0 centre, __1..__4 TL, TR, BL, BR
    out = []
    for s in starts:
        clip = data[s:s + CLIP].transpose(1, 2, 0, 3)  # [h, w, T, 3]: crop on the first two axes
        crops = _five(clip, boxes)
        if n_crops == 10:
            crops += _five(clip[:, ::-1], boxes)  # the same five of the mirrored frame
        out.append(np.stack([c.transpose(2, 0, 1, 3) for c in crops[:n_crops]]))
    return starts, np.stack(out)


def _c3d_reference(frames: np.ndarray) -> tuple[list[int], np.ndarray]:
    starts = [i * CLIP for i in range(len(frames) // CLIP)]
    resized = np.stack([_bilinear(f, 128, 171) for f in frames])
    top, left = (128 - 112) // 2, (171 - 112) // 2
    crops = resized[:, top:top + 112, left:left + 112, ::-1].astype(np.float64) - C3D_BGR_MEAN
    return starts, np.stack([crops[s:s + CLIP][None] for s in starts])


# ----------------------------------------------------------------------------- preprocessing


def _assert_close(got: np.ndarray, want: np.ndarray, levels: float) -> None:
    assert got.shape == want.shape
    diff = np.abs(got - want)
    assert diff.max() <= levels * LEVEL + 1e-6, f"max diff {diff.max() / LEVEL:.2f} levels"
    assert diff.mean() <= 0.25 * LEVEL, f"mean diff {diff.mean() / LEVEL:.3f} levels"  # rounding only


def test_rtfm_recipe_matches_gowthams_extractor_on_real_frames() -> None:
    frames = _decode("videos/bikes.mp4", 40)  # 640x272; 2 clips, 8 frames left over
    config = _config("rtfm-i3d-r50-10crop")
    starts, want = _gowtham_reference(frames)
    assert [s for s, _ in clip_frame_ranges(len(frames), config.clip)] == starts == [0, 16]
    # uint8 Lanczos (torch) vs PIL's LANCZOS: within 2 grey levels (transforms module docstring)
    _assert_close(_vadpipe_clips(frames, config), want, levels=2)


@pytest.mark.parametrize("name, n_crops", [("wu-i3d-10crop", 10), ("xd-i3d-5crop", 5)])
def test_wu_recipes_match_pytorch_i3d_rules_on_real_frames(name: str, n_crops: int) -> None:
    n = 32 if name == "xd-i3d-5crop" else 40  # XD: (32 - 1) // 16 = 1 clip; UCF: 40 // 16 = 2
    frames = _decode("videos/bikes.mp4", n)  # 640x272 -> 602x256 (a downscale: no antialiasing matters)
    config = _config(name)
    n_used = n - 1 if name == "xd-i3d-5crop" else n
    starts, want = _wu_reference(frames, n_crops, n_used)
    assert [s for s, _ in clip_frame_ranges(n, config.clip)] == starts
    assert len(starts) == (1 if name == "xd-i3d-5crop" else 2)
    _assert_close(_vadpipe_clips(frames, config), want, levels=1)  # OpenCV's fixed-point weights: 1 level


@pytest.mark.parametrize("video", [
    "videos/carphone_pristine.mp4",  # 176x144 -> 312x256: upscaling
    "videos/bigbuckbunny.mp4",  # 1280x720 -> 455x256: centre column offset 231 / 2 rounds half to even (116, not 115)
])
def test_wu_recipe_on_other_frame_sizes(video: str) -> None:
    frames = _decode(video, 17)
    config = _config("wu-i3d-10crop")
    starts, want = _wu_reference(frames, 10, 17)
    assert [s for s, _ in clip_frame_ranges(17, config.clip)] == starts == [0]
    _assert_close(_vadpipe_clips(frames, config), want, levels=1)


def test_sultani_recipe_matches_c3d_v1_rules_on_real_frames() -> None:
    frames = _decode("videos/bikes.mp4", 40)
    config = _config("sultani-c3d")
    starts, want = _c3d_reference(frames)
    assert [s for s, _ in clip_frame_ranges(len(frames), config.clip)] == starts == [0, 16]
    got = _vadpipe_clips(frames, config)  # (x / 255 - m / 255) / (1 / 255): 0..255 units, BGR
    assert got.shape == want.shape
    diff = np.abs(got - want)
    assert diff.max() <= 1.0 + 1e-3 and diff.mean() <= 0.1, (diff.max(), diff.mean())


@pytest.mark.parametrize("n", [1, 15, 16, 17, 31, 32, 33, 47, 48, 49, 1601])
def test_clip_indices_follow_each_extractors_rule(n: int) -> None:
    def starts(name: str) -> list[int]:
        return [s for s, e in clip_frame_ranges(n, _config(name).clip) if e - s == CLIP]

    assert starts("rtfm-i3d-r50-10crop") == ([] if n < CLIP else list(range(0, (n - CLIP) // CLIP * CLIP + 1, CLIP)))
    assert starts("wu-i3d-10crop") == [16 * i for i in range(n // 16)]  # GT by floor(n / 16) (UR-DMU)
    assert starts("xd-i3d-5crop") == [16 * i for i in range((n - 1) // 16)]  # make_gt.py: (lens - 1) % 16 dropped
    assert starts("sultani-c3d") == [16 * i for i in range(n // 16)]
    for name in ("rtfm-i3d-r50-10crop", "wu-i3d-10crop", "xd-i3d-5crop", "sultani-c3d"):  # none pads a tail
        assert all(e - s == CLIP for s, e in clip_frame_ranges(n, _config(name).clip)), name


# ----------------------------------------------------------------------------- names, errors, records


def test_every_recipe_fixes_its_settings() -> None:
    want = {  # name: (backbone, crops, order, resize, interpolation, antialias, layout, tail, drop_last)
        "rtfm-i3d-r50-10crop": ("i3d-r50-caffe2", 10, "gowtham", (256, 340), "lanczos", True, "single", "drop", 0),
        "wu-i3d-10crop": ("i3d", 10, "wu", 256, "bilinear", False, "per-crop", "drop", 0),
        "xd-i3d-5crop": ("i3d", 5, "wu", 256, "bilinear", False, "per-crop", "drop", 1),
        "sultani-c3d": ("c3d", 1, "caffe", (128, 171), "bilinear", False, "single", "drop", 0),
    }
    for name, facts in want.items():
        c = _config(name)
        p = c.preset
        assert (c.backbone, c.crops, p.crop_order, p.resize, p.interpolation, p.antialias, c.layout, c.clip.tail,
                c.clip.drop_last) == facts, name
        assert (c.clip.length, c.clip.stride, c.recipe, c.recipe_overrides) == (16, 16, name, ())
    for name in ("rtfm-i3d-r50-10crop", "wu-i3d-10crop", "xd-i3d-5crop"):
        assert _config(name).preset.value_range == (-1.0, 1.0)
    assert get_backbone("i3d").feature_dim == 1024 and get_backbone("i3d-r50-caffe2").feature_dim == 2048


def test_aliases_resolve_to_the_new_names() -> None:
    assert RECIPE_ALIASES == {"rtfm-ucf": "rtfm-i3d-r50-10crop", "sultani": "sultani-c3d"}
    assert get_recipe("rtfm-ucf") is RECIPES["rtfm-i3d-r50-10crop"]
    assert get_recipe("sultani") is RECIPES["sultani-c3d"]
    assert _config("rtfm-ucf") == _config("rtfm-i3d-r50-10crop")  # recorded under the new name
    assert _config("sultani").recipe == "sultani-c3d"


def test_an_unknown_recipe_is_a_clear_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown feature recipe 'nope'; known: .*wu-i3d-10crop.*rtfm-ucf ->"):
        get_recipe("nope")
    spec = get_backbone("i3d")
    with pytest.raises(ConfigError, match="unknown feature recipe"):
        recipe_config("nope", backbone="i3d", backbone_preset=spec.preset, backbone_clip_len=16)
    with pytest.raises(ConfigError, match="unknown feature recipe"):
        ExtractConfig(recipe="nope")
    with pytest.raises(ConfigError, match="unknown feature recipe"):
        ExtractConfig.from_dict({"recipe": "nope"})


def test_explicit_flags_override_a_recipe_and_are_recorded() -> None:
    spec = get_backbone("i3d")
    c = recipe_config("xd-i3d-5crop", backbone="i3d", backbone_preset=spec.preset, backbone_clip_len=16,
                      tail="pad", crops=5, layout="single", resize=(256, 340))
    assert (c.clip.tail, c.clip.drop_last, c.layout, c.preset.resize, c.crops) == ("pad", 1, "single", (256, 340), 5)
    assert c.recipe == "xd-i3d-5crop" and c.recipe_overrides == ("resize=256x340", "tail=pad", "layout=single")
    assert ExtractConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c  # survives the run record


def test_new_settings_leave_the_hash_of_older_folders_unchanged() -> None:
    """Folders written before ``drop_last``/``recipe`` existed keep their ``config_hash`` (no recompute)."""
    from dataclasses import asdict

    config = ExtractConfig(backbone="tiny")
    old = {"weights": "sha", "backbone": "tiny", "clip": {"length": 16, "stride": 16, "tail": "drop"},
           "preset": None, "crops": 10, "fps": None, "layout": "single", "precision": "fp32"}
    assert config.feature_hash("sha") == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    with_recipe = _config("wu-i3d-10crop")
    assert with_recipe.feature_hash("sha") != ExtractConfig(**{**with_recipe.__dict__, "recipe": None}).feature_hash(
        "sha")
    assert "drop_last" in asdict(_config("xd-i3d-5crop").clip)


def test_recipe_is_recorded_in_the_manifest_and_the_run_record(tmp_path: Path) -> None:
    """A real run (Inception-I3D, random weights, one 16-frame clip of 5 crops on the CPU)."""
    from click.testing import CliRunner

    from tests.helpers import media
    from vadpipe.cli import main
    from vadpipe.manifests.features import read_manifest
    from vadpipe.manifests.provenance import extraction_of

    torch.manual_seed(0)
    media.make_video(tmp_path / "v.mp4", n_frames=17, seed=3)  # 17 - 1 = 16 frames used: one clip
    res = CliRunner().invoke(main, ["extract", str(tmp_path / "v.mp4"), "--preset", "xd-i3d-5crop", "--random-weights",
                                    "--device", "cpu", "--workers", "0", "-q", "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    (row,) = read_manifest(tmp_path / "o" / "features.csv")
    assert (row.recipe, row.layout, row.crops, row.n_clips, row.n_frames) == ("xd-i3d-5crop", "per-crop", 5, 1, 17)
    assert row.feature_path == "v__{k}.npy"
    for k in range(5):
        assert np.load(tmp_path / "o" / f"v__{k}.npy").shape == (1, 1024)
    (run,) = (tmp_path / "o").glob("extract-*.json")
    cfg = json.loads(run.read_text())["config"]
    assert (cfg["recipe"], cfg["recipe_overrides"], cfg["crops"], cfg["layout"]) == ("xd-i3d-5crop", [], 5, "per-crop")
    assert cfg["clip"] == {"length": 16, "stride": 16, "tail": "drop", "drop_last": 1}
    assert (cfg["preset"]["crop_order"], cfg["preset"]["resize"], cfg["preset"]["antialias"]) == ("wu", 256, False)
    found = extraction_of([tmp_path / "o" / f"v__{k}.npy" for k in range(5)])
    assert found is not None and found["config"]["recipe"] == "xd-i3d-5crop"  # what a head's checkpoint records


def test_cli_refuses_an_unknown_recipe_and_accepts_an_alias(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vadpipe.cli import main

    res = CliRunner().invoke(main, ["extract", str(tmp_path / "v.mp4"), "--preset", "nope"])
    assert res.exit_code == 2 and "rtfm-i3d-r50-10crop" in res.output
    res = CliRunner().invoke(main, ["extract", str(tmp_path / "v.mp4"), "--preset", "rtfm-ucf", "--backbone", "c3d"])
    assert res.exit_code == 2 and "made with --backbone i3d-r50-caffe2" in res.output
