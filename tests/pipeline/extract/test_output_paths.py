"""Every output lies inside ``--out``: an input whose output would leave it fails its own row
(before it is decoded), nothing is written elsewhere, and ``feature_path`` never starts with ``../``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

import tests.helpers.tiny_backbone  # noqa: F401  (registers "tiny")
from tests.helpers import media
from vadpipe.manifests.features import read_manifest
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.extract.runner import extract
from vadpipe.pipeline.extract.sources import VideoJob, discover
from vadpipe.pipeline.extract.stream import VideoDone
from vadpipe.pipeline.extract.writer import WriteContext, finish_video

CFG = ExtractConfig(backbone="tiny", crops=1, random_weights=True, device="cpu", workers=0)


def _npy_outside(tmp_path: Path, out: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*.npy") if not p.is_relative_to(out)]


def test_a_dotdot_list_entry_that_appears_after_the_list_was_read_fails_its_row(tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    media.make_video(lists / "inside.mp4", n_frames=20)
    (lists / "list.csv").write_text("video\ninside.mp4\n../outside/late.mp4\n")
    jobs = discover([lists / "list.csv"])  # late.mp4 does not exist yet: its name keeps the ".."
    assert sorted(j.rel_name for j in jobs) == ["../outside/late", "inside"]
    media.make_video(tmp_path / "outside" / "late.mp4", n_frames=20)  # ... and now it does
    out = tmp_path / "lists" / "out"
    summary = extract(jobs, out, CFG, progress=False)
    rows = {Path(r.video).name: r for r in read_manifest(out / "features.csv")}
    assert rows["inside.mp4"].status == "ok"
    late = rows["late.mp4"]
    assert late.status == "failed" and "would leave the output folder" in late.error, late
    assert late.n_frames == 0 and late.decoder == ""  # refused before it was decoded
    assert summary.failed == 1 and summary.exit_code == 1
    assert not any(r.feature_path.startswith("../") for r in rows.values())
    assert _npy_outside(tmp_path, out) == []


def test_a_symlink_inside_the_output_folder_is_not_written_through(tmp_path: Path) -> None:
    media.make_video(tmp_path / "in" / "cam" / "v.mp4", n_frames=20)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "cam").symlink_to(elsewhere, target_is_directory=True)
    extract(discover([tmp_path / "in"]), out, CFG, progress=False)
    (row,) = read_manifest(out / "features.csv")
    assert row.status == "failed" and "outside the output folder" in row.error and row.feature_path == ""
    assert list(elsewhere.iterdir()) == []


def test_the_writer_refuses_an_escaping_name_itself(tmp_path: Path) -> None:
    """The last guard, in the process that writes (engines hand it jobs the runner checked)."""
    from vadpipe.pipeline.extract.writer import backbone_by_name

    out = tmp_path / "out"
    out.mkdir()
    spec = backbone_by_name("tiny")
    ctx = WriteContext(root=out, config=CFG.with_preset(spec.preset), spec=spec, config_hash="h",
                       weights_sha256="random")
    job = VideoJob(path=str(tmp_path / "v.mp4"), rel_name="../escaped")
    done = VideoDone(job=0, video=job, started=time.time(), n_frames=16, fps=25.0, decoder="pyav",
                     n_clips=1)
    row = finish_video(ctx, job, done, [(0, torch.ones(1, 1, spec.feature_dim))])
    assert row.status == "failed" and "would leave the output folder" in row.error
    assert _npy_outside(tmp_path, out) == [] and list(out.iterdir()) == []
    ok = finish_video(ctx, VideoJob(path=job.path, rel_name="fine"), done, [(0, torch.ones(1, 1, spec.feature_dim))])
    assert ok.status == "ok" and np.load(out / ok.feature_path).shape == (1, 1, spec.feature_dim)
