"""Head settings checked by type and range; vadpipe checkpoints checked before use."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vadpipe.errors import CheckpointError, ConfigError
from vadpipe.heads.base import get_head, list_heads, make_config, validate_settings
from vadpipe.heads.checkpoints import read_vadpipe_checkpoint
from vadpipe.heads.sultani import SultaniConfig, SultaniHead

# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "head, values, converted",
    [
        ("sultani", {"lr": 1}, {"lr": 1.0}),
        ("sultani", {"lr": 0.0}, {"lr": 0.0}),  # a frozen run is allowed
        ("sultani", {"batch_size": 4.0}, {"batch_size": 4}),
        ("sultani", {"l2_normalize": "false"}, {"l2_normalize": False}),
        ("sultani", {"l2_normalize": True}, {"l2_normalize": True}),
        ("sultani", {"hidden_dims": [64, 8]}, {"hidden_dims": (64, 8)}),
        ("sultani", {"reduction": "paired_mean"}, {"reduction": "paired_mean"}),
        ("rtfm", {"alpha": None}, {"alpha": None}),
        ("rtfm", {"alpha": "null"}, {"alpha": None}),
        ("rtfm", {"alpha": 2}, {"alpha": 2.0}),
        ("lanet", {"max_steps": "none"}, {"max_steps": None}),
        ("mgfn", {"dims": (16, 32, 64), "mgfn_types": ["gb", "fb", "fb"]},
         {"dims": (16, 32, 64), "mgfn_types": ("gb", "fb", "fb")}),
        ("mcr", {"base_head": "sultani", "base_overrides": {"lr": 1}},
         {"base_head": "sultani", "base_overrides": {"lr": 1.0}}),
    ],
)
def test_valid_settings_are_converted_to_the_field_types(head: str, values: dict, converted: dict) -> None:
    out = validate_settings(get_head(head), values)
    assert out == converted
    assert [type(v) for v in out.values()] == [type(v) for v in converted.values()]


@pytest.mark.parametrize(
    "head, values, message",
    [
        ("sultani", {"lr": "abc"}, "sultani setting lr='abc': expected a number >= 0 (default 0.01)"),
        ("sultani", {"lr": -0.1}, "lr=-0.1: expected a number >= 0"),
        ("sultani", {"lr": float("inf")}, "lr=inf: expected a number >= 0 (finite, at most 3.4e38"),
        ("sultani", {"lr": True}, "lr=True: expected a number"),
        ("sultani", {"batch_size": -1}, "batch_size=-1: expected an integer >= 1 (default 30)"),
        ("sultani", {"batch_size": 0}, "batch_size=0: expected an integer >= 1"),
        ("sultani", {"batch_size": 2.5}, "batch_size=2.5: expected an integer >= 1"),
        ("sultani", {"dropout": 1.0}, "dropout=1.0: expected a number in [0, 1)"),
        ("sultani", {"dropout": -0.1}, "dropout=-0.1: expected a number in [0, 1)"),
        ("sultani", {"l2_normalize": "maybe"}, "l2_normalize='maybe': expected true or false"),
        ("sultani", {"l2_normalize": 2}, "l2_normalize=2: expected true or false"),
        ("sultani", {"hidden_dims": "abc"}, "hidden_dims='abc': expected a list of 2 integers >= 1 (default [512, 32])"),
        ("sultani", {"hidden_dims": (1, 2, 3)}, "hidden_dims=[1, 2, 3]: expected a list of 2 integers"),
        ("sultani", {"hidden_dims": (1, 0)}, "hidden_dims=[1, 0]: expected a list of 2 integers >= 1"),
        ("sultani", {"reduction": "foo"}, "reduction='foo': expected one of 'official', 'paired_mean'"),
        ("sultani", {"lrr": 1}, "head 'sultani' has no setting(s) ['lrr']; known:"),
        ("rtfm", {"alpha": "abc"}, "alpha='abc': expected a number >= 0 or null (default null)"),
        ("rtfm", {"max_steps": None}, "max_steps=null: expected an integer >= 1"),
        ("mgfn", {"mgfn_types": ("gb", 3)}, "mgfn_types=['gb', 3]: expected a list of strings"),
        ("mcr", {"windows": 3}, "mcr setting windows=3: expected a list of integers >= 1 (default [1, 3, 5])"),
        ("mcr", {"base_overrides": 3}, "base_overrides=3: expected a JSON object"),
        ("mcr", {"base_head": "rtfm", "base_overrides": {"lr": "x"}}, "rtfm setting lr='x'"),
        ("mcr", {"base_head": "rtfm", "base_overrides": {"nope": 1}}, "head 'rtfm' has no setting(s) ['nope']"),
    ],
)
def test_invalid_settings_name_key_value_and_expected_type(head: str, values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_settings(get_head(head), values)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_every_heads_defaults_pass_the_checks() -> None:
    import dataclasses

    for name in list_heads():
        spec = get_head(name)
        defaults = {f.name: getattr(spec.config_cls(), f.name) for f in dataclasses.fields(spec.config_cls)}
        assert validate_settings(spec, defaults) == defaults, name
        for values in spec.presets.values():
            validate_settings(spec, dict(values))  # the paper presets are valid settings too


def test_make_config_turns_a_config_type_error_into_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid sultani settings"):
        make_config(get_head("sultani"), {"hidden_dims": ("a", "b")})  # int('a') inside __post_init__


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint(tmp_path: Path, **changes) -> Path:
    cfg = SultaniConfig(in_dim=8, hidden_dims=(4, 2))
    head = SultaniHead(cfg)
    payload = {"format": "vadpipe-head/1", "kind": "last", "head": "sultani",
               "head_config": {"in_dim": 8, "hidden_dims": [4, 2]}, "feature_spec": {"dim": 8, "crops": 1},
               "selection": "val", "state_dict": head.state_dict(), "optimizer": {}, "step": 1, "history": [],
               "best_metric": 0.5, "best_step": 1, "bad_evals": 0, "torch_rng": torch.get_rng_state()}
    payload.update(changes)
    payload = {k: v for k, v in payload.items() if v is not ...}
    torch.save(payload, tmp_path / "c.pt")
    return tmp_path / "c.pt"


def test_a_good_checkpoint_reads_and_resumes(tmp_path: Path) -> None:
    ckpt = read_vadpipe_checkpoint(_checkpoint(tmp_path), resume=True)
    assert ckpt["head"] == "sultani" and set(ckpt["state_dict"]) == {f"fc{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"format": ...}, "a bare PyTorch state dict without vadpipe's metadata"),  # its state_dict entry
        ({"format": "other/2"}, "format 'other/2'; this vadpipe reads 'vadpipe-head/1'"),
        ({"head_config": ...}, "missing head_config"),
        ({"selection": 3}, "selection is a int"),
        ({"head": "nope"}, "head 'nope', which this vadpipe does not know; known heads: "),
        ({"state_dict": {}}, "its state_dict is empty"),
        ({"state_dict": {"fc1.weight": [1.0]}}, "non-tensor entries 'fc1.weight'"),
        ({"head_config": {"in_dim": 8, "hidden_dims": [4, 2], "extra": 1}}, "its sultani settings are not valid"),
        ({"head_config": {"in_dim": 16, "hidden_dims": [4, 2]}},
         "its weights do not fit the sultani head its settings describe: 1 mis-shaped: fc1.weight"),
    ],
)
def test_a_broken_vadpipe_checkpoint_is_refused_in_one_line(tmp_path: Path, changes: dict, message: str) -> None:
    path = _checkpoint(tmp_path, **changes)
    with pytest.raises(CheckpointError) as info:
        read_vadpipe_checkpoint(path)
    text = str(info.value)
    assert text.startswith(f"{path} is not a vadpipe checkpoint (") and message in text and "\n" not in text


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_text("hello"), "not a file torch.save wrote"),
        (lambda p: p.write_bytes(b""), "the file is empty"),
        (lambda p: p.write_bytes(b"PK\x03\x04" + bytes(40)), "a damaged or truncated zip archive"),
        (lambda p: torch.save(torch.nn.ReLU(), p), "it pickles a torch.nn.modules.activation.ReLU object"),
        (lambda p: torch.save({"fc1.weight": torch.zeros(1)}, p), "a bare PyTorch state dict"),
        (lambda p: torch.save({"state_dict": {"a": torch.zeros(1)}}, p), "a bare PyTorch state dict"),
        (lambda p: torch.save(torch.zeros(2), p), "it holds a Tensor"),
        (lambda p: p.mkdir(), "it is a folder"),
    ],
)
def test_a_file_that_is_no_checkpoint_is_refused(tmp_path: Path, write, message: str) -> None:
    path = tmp_path / "x.pt"
    write(path)
    with pytest.raises(CheckpointError) as info:
        read_vadpipe_checkpoint(path)
    assert f"{path} is not a vadpipe checkpoint (" in str(info.value) and message in str(info.value)


def test_a_pickle_is_never_executed(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self):
            return (Path(tmp_path / "executed").write_text, ("pwned",))

    torch.save({"format": "vadpipe-head/1", "x": Boom()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refuses"):
        read_vadpipe_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "executed").exists()


def test_a_missing_checkpoint_and_one_without_training_state(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_vadpipe_checkpoint(tmp_path / "missing.pt")
    imported = _checkpoint(tmp_path, kind="imported", optimizer=..., torch_rng=...)
    read_vadpipe_checkpoint(imported)  # scores fine
    with pytest.raises(CheckpointError, match="cannot be resumed: it was imported"):
        read_vadpipe_checkpoint(imported, resume=True)
    partial = _checkpoint(tmp_path, torch_rng=...)
    with pytest.raises(CheckpointError, match=r"lacks the training state \(torch_rng\)"):
        read_vadpipe_checkpoint(partial, resume=True)


def test_checkpoint_error_is_a_config_error() -> None:
    """Callers that caught the old ConfigError of load_checkpoint keep working."""
    assert issubclass(CheckpointError, ConfigError)
