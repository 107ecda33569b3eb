"""--config FILE on every command: flags -> effective config -> the same run; clear errors."""

from __future__ import annotations

import click
import torch
from click.testing import CliRunner

from tests.helpers.synthetic import make_dataset
from vadpipe.cli import main


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


def _commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


def test_every_command_takes_a_config_file():
    missing = [" ".join(path) for path, cmd in _commands(main) if not any(p.name == "config" for p in cmd.params)]
    assert not missing


def test_train_round_trip_and_flags_override(tmp_path):
    csv, _ = make_dataset(tmp_path / "d", 6, 6, crops=2, dim=16, seed=1)
    flags = ["train", "--train", str(csv), "--head", "sultani", "--steps", "6", "--eval-every", "3", "--seed", "2",
             "--device", "cpu", "--set", "batch_size=3", "-q"]
    r = _run(*flags, "-o", str(tmp_path / "a"))
    assert r.exit_code == 0, r.output
    effective = tmp_path / "a" / "train.yaml"
    text = effective.read_text()
    assert "steps: 6" in text and "batch_size=3" in text and "head: sultani" in text
    r = _run("train", "--config", str(effective), "-o", str(tmp_path / "b"))  # the same run again, elsewhere
    assert r.exit_code == 0, r.output
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    r = _run("train", "--config", str(effective), "--steps", "3", "-o", str(tmp_path / "c"))  # a flag wins
    assert r.exit_code == 0, r.output
    assert torch.load(tmp_path / "c" / "last.pt", weights_only=True)["step"] == 3
    toml = tmp_path / "run.toml"  # TOML, with the flag spellings
    toml.write_text(f'train = "{csv}"\nhead = "sultani"\nsteps = 2\neval-every = 1\ndevice = "cpu"\n'
                    f'set = ["batch_size=3"]\nquiet = true\nout = "{tmp_path / "t"}"\n')
    r = _run("train", "--config", str(toml))
    assert r.exit_code == 0, r.output
    assert torch.load(tmp_path / "t" / "last.pt", weights_only=True)["step"] == 2


def test_bad_config_files_are_one_line_errors(tmp_path):
    cases = {"unknown.yaml": ("stepz: 3\n", "no option 'stepz' for `vadpipe train`"),
             "broken.yaml": ("steps: [1\n", "is not valid YAML"),
             "list.yaml": ("- 1\n- 2\n", "must hold a mapping"),
             "broken.toml": ("steps = \n", "is not valid TOML"),
             "run.json": ("{}", "use a .yaml, .yml or .toml file")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        r = _run("train", "--config", str(tmp_path / name))
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, (name, r.output)
