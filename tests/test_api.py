"""The public Python API: `import vadpipe` stays light, and docs/api.md's examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import media
from tests.helpers.paths import REPO
from vadpipe.errors import ConfigError


def test_import_vadpipe_loads_no_torch():
    code = "import sys, vadpipe; vadpipe.Detector; print('torch' in sys.modules)"
    light = subprocess.run([sys.executable, "-c", "import sys, vadpipe; print('torch' in sys.modules)"],
                           capture_output=True, text=True, check=True)
    assert light.stdout.strip() == "False"
    used = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert used.stdout.strip() == "False"  # the name resolves; torch comes only when a function runs
    import vadpipe
    import vadpipe.api

    assert set(vadpipe.API) <= set(dir(vadpipe.api)) and vadpipe.extract is vadpipe.api.extract
    with pytest.raises(AttributeError):
        vadpipe.no_such_function  # noqa: B018


def test_docs_examples_run(tmp_path, monkeypatch, one_thread):
    """Every ```python block of docs/api.md, in order, in a folder with the files it names."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "api.md").read_text(), flags=re.S)
    assert len(blocks) >= 4
    videos = tmp_path / "videos"
    videos.mkdir()
    for i, name in enumerate(["normal0", "normal1", "anomalous0", "anomalous1"]):
        media.make_video(videos / f"{name}.mp4", 48, width=128, height=96, seed=i)
    (tmp_path / "gt.csv").write_text("video,start,end\nanomalous0,16,40\nanomalous1,0,30\n")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)  # noqa: S102
    assert namespace["summary"].exit_code == 0
    assert namespace["run"].best_path.is_file()
    m = namespace["result"].metrics
    assert 0.0 <= m.auc <= 1.0 and m.n_videos == 4
    scores = namespace["scores"]
    assert scores.shape == (3,) and np.isfinite(scores).all() and len(namespace["live"]) == 3
    np.testing.assert_allclose(namespace["onnx_scores"], scores, rtol=0, atol=1e-4)


def test_detector_scores_equal_the_batch_path(tmp_path, one_thread):
    """Detector.score on decoded frames == vadpipe.score on the file (same features, same head)."""
    import vadpipe
    from vadpipe.manifests.datasets import from_features_manifest, write_dataset

    video = media.make_video(tmp_path / "v" / "a.mp4", 40, width=128, height=96, seed=3)
    media.make_video(tmp_path / "v" / "b.mp4", 40, width=128, height=96, seed=4)
    vadpipe.extract(tmp_path / "v", tmp_path / "f", backbone="c3d", crops=1, random_weights=True)
    write_dataset(tmp_path / "f" / "d.csv", from_features_manifest(tmp_path / "f" / "features.csv",
                                                                     {"a": "anomalous", "b": "normal"}))
    run = vadpipe.train(tmp_path / "f" / "d.csv", head="sultani", out=tmp_path / "r", protocol="paper", steps=2,
                        settings={"batch_size": 1})
    batch = vadpipe.score(video, run.best_path, tmp_path / "s", random_weights=True, plots=False)
    import av

    with av.open(str(video)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    mine = vadpipe.Detector(run.best_path, random_weights=True).score(frames)
    got = next(v for v in batch.videos if v.video.endswith("a.mp4"))
    np.testing.assert_allclose(mine, got.scores, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="uint8"):
        vadpipe.Detector(run.best_path, random_weights=True).score(frames.astype(np.float32))
