"""The typed run record beside every features folder: what it writes, what it refuses to read."""

from __future__ import annotations

import json

import pytest

from vadpipe.errors import ManifestError
from vadpipe.manifests.provenance import run_records
from vadpipe.manifests.runs import RunRecord, new_run_path


def _record(**kw) -> RunRecord:
    base = dict(config={"backbone": "i3d", "crops": 10}, config_hash="abc", weights_sha256="f" * 64,
                vadpipe_version="1.0", started="2026-12-03T10:00:00+00:00", device="cpu", inputs=3, to_process=2)
    return RunRecord(**{**base, **kw})


def test_a_record_round_trips_and_leaves_out_what_is_not_known_yet(tmp_path):
    rec = _record()
    path = new_run_path(tmp_path)
    assert path.parent == tmp_path and path.name.startswith("extract-") and path.suffix == ".json"
    rec.write(path)
    data = json.loads(path.read_text())
    assert "finished" not in data and "ok" not in data and data["config_hash"] == "abc"
    assert RunRecord.read(path) == rec and rec.backbone == "i3d"
    rec.finish(ok=2, failed=0, skipped=1, clips=7, seconds=1.23456, per_device={})
    rec.write(path)
    back = RunRecord.read(path)
    assert (back.ok, back.skipped, back.clips, back.seconds, back.per_device) == (2, 1, 7, 1.235, None)
    assert back.finished is not None


@pytest.mark.parametrize("text, problem", [
    ("{not json", "unreadable run record"),
    ("[1, 2]", "expected a JSON object"),
    ('{"config": {}, "config_hash": "x"}', "missing weights_sha256"),
    ('{"config": [], "config_hash": "x", "weights_sha256": "y"}', "config should be dict"),
    ('{"config": {}, "config_hash": 3, "weights_sha256": "y"}', "config_hash should be str"),
])
def test_a_damaged_record_is_refused_with_the_reason(tmp_path, text, problem):
    path = tmp_path / "extract-1.json"
    path.write_text(text)
    with pytest.raises(ManifestError, match=problem):
        RunRecord.read(path)


def test_provenance_skips_damaged_records_and_keeps_the_latest_of_each_hash(tmp_path):
    _record(config_hash="h1", device="cpu").write(tmp_path / "extract-20260101T000000000000Z.json")
    _record(config_hash="h1", device="cuda:0").write(tmp_path / "extract-20260102T000000000000Z.json")
    (tmp_path / "extract-20260103T000000000000Z.json").write_text('{"config_hash": "h2"}')  # damaged
    records = run_records(tmp_path)
    assert set(records) == {"h1"} and records["h1"].device == "cuda:0"
