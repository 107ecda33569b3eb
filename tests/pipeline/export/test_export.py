"""`vadpipe export`: the exported detector (ONNX on onnxruntime, TorchScript) gives the scores
of the PyTorch path on real decoded frames, for every head that exports; `score --model`
writes what `score --head` writes and runs without torch; bad files and options fail clearly."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import tests.helpers.tiny_backbone  # noqa: F401  (registers "tiny")
import vadpipe
from tests.helpers.paths import REPO as REPO_ROOT
from tests.helpers.tiny_heads import cli, train_tiny_sultani
from vadpipe.errors import ConfigError, ExportError, WeightsNotFoundError
from vadpipe.extractors.presets import CROP_ORDERS
from vadpipe.heads.base import get_head, list_heads
from vadpipe.pipeline.export import build
from vadpipe.pipeline.export.build import NOT_EXPORTABLE, export_detector
from vadpipe.pipeline.export.graph import crop_offsets
from vadpipe.pipeline.export.runtime import OnnxDetector
from vadpipe.pipeline.extract.decode import open_video
from vadpipe.pipeline.extract.transforms import crop_boxes
from vadpipe.pipeline.train.apply import LoadedHead
from vadpipe.pipeline.train.loop import build_head

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

#: The parity bound of the issue (fp32, exported file vs PyTorch).
ATOL = 1e-4
REAL_VIDEO = REPO_ROOT / "examples" / "videos" / "carphone_pristine.mp4"  # real H.264 frames, 176x144


def _frames(path: Path, limit: int | None = None) -> np.ndarray:
    reader = open_video(path)
    try:
        frames = np.concatenate(list(reader.iter_chunks()))
    finally:
        reader.close()
    return frames[:limit] if limit else frames


def _loaded(head: str, backbone: str, crops: int, dim: int, seed: int = 0) -> LoadedHead:
    """A seeded, untrained head on ``backbone`` features (its recipe: ``crops`` crops, 16-frame clips)."""
    torch.manual_seed(seed)
    module, _ = build_head(get_head(head), {}, feature_dim=dim)
    return LoadedHead(head=module.eval(), name=head, feature_spec={"backbone": backbone, "crops": crops, "dim": dim},
                      selection="last", threshold=0.5)


@pytest.fixture(scope="module")
def sultani(tmp_path_factory) -> dict:
    """A trained Sultani head (L2-normalised input, causal) on tiny-backbone features, and its export."""
    t = train_tiny_sultani(tmp_path_factory.mktemp("export"), n_videos=6, steps=2)
    t["onnx"] = t["root"] / "detector.onnx"
    t["result"] = export_detector(t["ckpt"], t["onnx"], random_weights=True)
    return t


def test_crop_offsets_are_stage_ones_crop_boxes() -> None:
    """The graph's integer-only crop arithmetic equals stage one's boxes (odd and even spare
    pixels: half-even and floor rounding differ at 3, 7, 11, ...)."""
    for order in CROP_ORDERS:
        for n_crops in (1, 5, 10):
            for h, w in ((224, 224), (227, 231), (256, 341), (341, 256), (235, 239), (240, 320)):
                assert crop_offsets(h, w, 224, order, n_crops) == crop_boxes(h, w, 224, order, n_crops), (order, h, w)


@pytest.mark.parametrize("head", [h for h in list_heads() if h not in NOT_EXPORTABLE])
def test_every_exportable_head_matches_pytorch_on_real_frames(head: str, tmp_path: Path) -> None:
    """ONNX on onnxruntime == vadpipe.Detector (PyTorch) on real decoded frames, 10 crops:
    whole video in one call and in batches (earlier features as context), and clip by clip."""
    loaded = _loaded(head, "tiny", crops=10, dim=tests.helpers.tiny_backbone.TINY_DIM)
    result = export_detector(loaded, tmp_path / "d.onnx", random_weights=True)
    assert result.max_score_diff <= ATOL and result.info.head == head
    frames = _frames(REAL_VIDEO, 112)  # 7 clips
    reference = vadpipe.Detector(loaded, random_weights=True, device="cpu").score(frames)
    onnx = OnnxDetector(tmp_path / "d.onnx")
    assert onnx.resizer == "torchvision"
    np.testing.assert_allclose(onnx.score(frames, batch_clips=7), reference, rtol=0, atol=ATOL)
    np.testing.assert_allclose(onnx.score(frames, batch_clips=3), reference, rtol=0, atol=ATOL)
    pt = vadpipe.Detector(loaded, random_weights=True, device="cpu", window=4)
    onnx = OnnxDetector(tmp_path / "d.onnx", window=4)
    streamed = [(onnx.score_clip(c), pt.score_clip(c)) for c in frames.reshape(7, 16, *frames.shape[1:])]
    np.testing.assert_allclose(*zip(*streamed), rtol=0, atol=ATOL)


def test_sacrf_is_refused_with_the_reason(tmp_path: Path) -> None:
    loaded = _loaded("sacrf", "tiny", crops=1, dim=tests.helpers.tiny_backbone.TINY_DIM)
    with pytest.raises(ExportError, match="data-dependent"):
        export_detector(loaded, tmp_path / "d.onnx", random_weights=True)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_real_i3d_exports_and_matches_pytorch_on_real_frames(tmp_path: Path) -> None:
    """The real Inception-I3D (Kinetics-400 weights) + RTFM head: ONNX scores within 1e-4 of
    PyTorch on real frames of two sizes (176x144 and its portrait transpose); the
    torch-free Pillow resize stays close (measured bound)."""
    from vadpipe.extractors import get_backbone

    spec = get_backbone("i3d")
    try:
        spec.build(weights=spec.weights)
    except WeightsNotFoundError as e:
        pytest.skip(f"no Inception-I3D weights here: {e}")
    loaded = _loaded("rtfm", "i3d", crops=1, dim=1024, seed=3)
    result = export_detector(loaded, tmp_path / "i3d.onnx")
    assert result.max_score_diff <= ATOL and result.info.weights_sha256 not in ("", "random")
    frames = _frames(REAL_VIDEO, 48)  # 3 clips
    torch_detector = vadpipe.Detector(loaded, device="cpu")
    onnx = OnnxDetector(tmp_path / "i3d.onnx")
    for clip_frames in (frames, np.ascontiguousarray(frames.transpose(0, 2, 1, 3))):
        reference = torch_detector.score(clip_frames)
        np.testing.assert_allclose(onnx.score(clip_frames, batch_clips=2), reference, rtol=0, atol=ATOL)
    pillow = OnnxDetector(tmp_path / "i3d.onnx", resizer="pillow").score(frames)
    assert np.abs(pillow - torch_detector.score(frames)).max() < 2e-3


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_export_matches_pytorch(tmp_path: Path) -> None:
    """The traced file takes other frame sizes and context lengths than the trace's example."""
    loaded = _loaded("rtfm", "tiny", crops=10, dim=tests.helpers.tiny_backbone.TINY_DIM)
    result = export_detector(loaded, tmp_path / "d.pt", format="torchscript", random_weights=True)
    extra = {build.METADATA_KEY: ""}
    module = torch.jit.load(str(result.path), _extra_files=extra)
    assert json.loads(extra[build.METADATA_KEY])["format"] == "torchscript"
    graph, _, _ = build.build_graph(loaded, random_weights=True)
    g = torch.Generator().manual_seed(5)
    clips = torch.randint(0, 256, (3, 16, 57, 40, 3), dtype=torch.uint8, generator=g)
    context = torch.randn(5, 10, tests.helpers.tiny_backbone.TINY_DIM, generator=g)
    with torch.no_grad():
        for got, want in zip(module(clips, context), graph(clips, context)):
            torch.testing.assert_close(got, want, rtol=0, atol=ATOL)


def test_score_model_writes_what_score_head_writes(sultani: dict, tmp_path: Path) -> None:
    """`score --model` and `score --head` on the same videos: the same clips, times and events,
    scores within 1e-4; a corrupt video fails its own row and the batch goes on."""
    vids = tmp_path / "vids"
    vids.mkdir()
    for src in sorted(sultani["vids"].glob("*.mp4"))[-2:]:
        (vids / src.name).write_bytes(src.read_bytes())
    (vids / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    res = cli(["score", vids, "--model", sultani["onnx"], "-o", tmp_path / "onnx", "-q"])
    assert res.exit_code == 1, res.output  # the broken video
    assert "1 failed" in res.output and "broken.mp4" in res.output
    res = cli(["score", vids, "--head", sultani["ckpt"], "-o", tmp_path / "pt", "--random-weights", "--device", "cpu",
               "--no-plots", "-q"])
    assert res.exit_code == 1, res.output
    for name in ("v4", "v5"):
        mine, theirs = (pd.read_csv(tmp_path / d / name / "scores.csv") for d in ("onnx", "pt"))
        pd.testing.assert_frame_equal(mine.drop(columns="score"), theirs.drop(columns="score"))
        np.testing.assert_allclose(mine.score, theirs.score, rtol=0, atol=ATOL)
    events = [json.loads((tmp_path / d / "events.json").read_text()) for d in ("onnx", "pt")]
    assert events[0]["threshold"] == events[1]["threshold"] and events[0]["videos"].keys() == events[1]["videos"].keys()
    for name, mine in events[0]["videos"].items():
        theirs = events[1]["videos"][name]["events"]
        assert [(e["start_clip"], e["end_clip"]) for e in mine["events"]] == [(e["start_clip"], e["end_clip"]) for e in theirs]
        np.testing.assert_allclose([e["mean_score"] for e in mine["events"]], [e["mean_score"] for e in theirs], atol=ATOL)
    manifest = pd.read_csv(tmp_path / "onnx" / "scores_manifest.csv").set_index("video")
    assert manifest.loc[str(vids / "broken.mp4"), "status"] == "failed"
    assert json.loads((tmp_path / "onnx" / "model.json").read_text())["resizer"] == "torchvision"


_NO_TORCH = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision") or name.startswith(("vadpipe.heads", "vadpipe.pipeline.train")):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
from vadpipe.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "vadpipe")))
"""


def test_score_model_runs_without_torch_or_training_code(sultani: dict, tmp_path: Path) -> None:
    """With torch, torchvision, the heads and the training code unimportable, `score --model`
    still scores (Pillow resize), close to the torch path."""
    video = sorted(sultani["vids"].glob("*.mp4"))[-1]
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, "score", str(video), "--model", str(sultani["onnx"]),
                           "-o", str(tmp_path / "o"), "-q"], capture_output=True, text=True, timeout=300,
                          cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0, proc.stderr
    loaded = ast.literal_eval(proc.stdout.split("LOADED", 1)[1].strip())
    assert "vadpipe.pipeline.export.runtime" in loaded
    assert not [m for m in loaded if m == "torch" or m.startswith(("torch.", "vadpipe.heads", "vadpipe.pipeline.train"))]
    assert json.loads((tmp_path / "o" / "model.json").read_text())["resizer"] == "pillow"
    got = pd.read_csv(tmp_path / "o" / video.stem / "scores.csv").score.to_numpy()
    want = vadpipe.Detector(sultani["ckpt"], random_weights=True, device="cpu").score(_frames(video))
    assert got.shape == want.shape and np.abs(got - want).max() < 2e-2


def test_export_cli_and_failures(sultani: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = cli(["export", "--checkpoint", sultani["ckpt"], "-o", tmp_path / "d.onnx", "--random-weights",
               "--threshold", "0.7"])
    assert res.exit_code == 0, res.output
    assert "check against PyTorch: scores within" in res.output
    assert OnnxDetector(tmp_path / "d.onnx").threshold == 0.7
    # both or neither of --head/--model; PyTorch-only options with --model
    assert "--head best.pt" in cli(["score", sultani["vids"], "-o", tmp_path / "x"]).output
    res = cli(["score", sultani["vids"], "--model", tmp_path / "d.onnx", "--gt", "csv:x.csv", "-o", tmp_path / "x"])
    assert res.exit_code == 2 and "--gt work with --head only" in res.output
    # an ONNX model that is not a vadpipe detector
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "other.onnx")
    res = cli(["score", sultani["vids"], "--model", tmp_path / "other.onnx", "-o", tmp_path / "x"])
    assert res.exit_code == 2 and "without vadpipe's 'vadpipe.detector' metadata" in res.output
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    res = cli(["score", sultani["vids"], "--model", tmp_path / "junk.onnx", "-o", tmp_path / "x"])
    assert res.exit_code == 2 and "onnxruntime cannot load it" in res.output
    # a file that fails the parity check is not left behind
    monkeypatch.setattr(build, "PARITY_ATOL", -1.0)
    with pytest.raises(ExportError, match="differ from PyTorch"):
        export_detector(sultani["ckpt"], tmp_path / "bad.onnx", random_weights=True)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith((".bad", "bad"))]


def test_device_choice_for_onnxruntime() -> None:
    """CPU on a CPU-only onnxruntime; CUDA asked for there is a clear error, not a silent CPU run."""
    import onnxruntime as ort

    from vadpipe.pipeline.export.runtime import providers_for

    assert providers_for("cpu") == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert providers_for("cuda:1")[0] == ("CUDAExecutionProvider", {"device_id": 1})
    else:
        assert providers_for("auto") == ["CPUExecutionProvider"]
        with pytest.raises(ExportError, match="no CUDA provider"):
            providers_for("cuda")
    with pytest.raises(ConfigError, match="unknown device"):
        providers_for("tpu")


def test_unknown_format_and_folder_target(sultani: dict, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown export format"):
        export_detector(sultani["ckpt"], tmp_path / "d.x", format="tflite", random_weights=True)
    with pytest.raises(ConfigError, match="is a folder"):
        export_detector(sultani["ckpt"], tmp_path, random_weights=True)


def test_stream_scores_of_a_causal_export_are_final(sultani: dict) -> None:
    """Sultani is causal: clip-by-clip ONNX scores equal the whole-video scores."""
    frames = _frames(sorted(sultani["vids"].glob("*.mp4"))[-1])
    onnx = OnnxDetector(sultani["onnx"])
    whole = onnx.score(frames)
    n = whole.size
    clips = frames[:n * 16].reshape(n, 16, *frames.shape[1:])
    np.testing.assert_allclose([onnx.score_clip(c) for c in clips], whole, rtol=0, atol=1e-6)


def test_in_memory_frames_must_be_uint8(sultani: dict) -> None:
    frames = _frames(sorted(sultani["vids"].glob("*.mp4"))[0])
    with pytest.raises(ConfigError, match="uint8"):
        OnnxDetector(sultani["onnx"]).score(frames.astype(np.float32))
