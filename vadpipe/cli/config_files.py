"""``--config FILE`` on every command: the same options as the flags, in YAML or TOML.

A config file holds a mapping of option names (``batch-clips`` or ``batch_clips``; arguments by
their name, e.g. ``inputs: [videos/]``) to values; flags given on the command line override it.
A command with an output folder (``-o DIR``) writes the effective options there as ``<command>.yaml``
(``runs/x/train.yaml``), so a run can be repeated with ``--config runs/x/train.yaml``.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from vadpipe.errors import ConfigError

__all__ = ["CONFIG_SUFFIXES", "read_config_file", "add_config_option", "effective_config_path"]

#: Config file formats by suffix.
CONFIG_SUFFIXES = (".yaml", ".yml", ".toml")
#: Options that are not part of a run's settings (left out of the effective config).
_NOT_SETTINGS = ("config",)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file.

    Raises:
        ConfigError: an unreadable or malformed file, another suffix, or not a mapping.
    """
    p = Path(path)
    if p.suffix.lower() not in CONFIG_SUFFIXES:
        raise ConfigError(f"--config {p}: use a .yaml, .yml or .toml file")
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"--config {p}: cannot read it ({e.strerror or e})") from None
    try:
        if p.suffix.lower() == ".toml":
            if sys.version_info < (3, 11):
                raise ConfigError("--config: TOML needs Python 3.11 (tomllib); use YAML")
            import tomllib

            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except ConfigError:
        raise
    except Exception as e:  # yaml.YAMLError, tomllib.TOMLDecodeError: one line, not a traceback
        raise ConfigError(f"--config {p} is not valid {p.suffix[1:].upper()}: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {p} must hold a mapping of option names to values, got {type(data).__name__}")
    return data


def _names(command: click.Command) -> dict[str, str]:
    """Every spelling of each parameter → its parameter name (``batch-clips``, ``batch_clips``, ``preset``)."""
    names: dict[str, str] = {}
    for param in command.params:
        if param.name is None or param.name in _NOT_SETTINGS or not param.expose_value:
            continue
        names[param.name] = param.name
        names[param.name.replace("_", "-")] = param.name
        for opt in getattr(param, "opts", []) + getattr(param, "secondary_opts", []):
            if opt.startswith("--"):
                names[opt[2:]] = param.name
                names[opt[2:].replace("-", "_")] = param.name
    return names


def _load(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is None or ctx.resilient_parsing:
        return
    data = read_config_file(value)
    names = _names(ctx.command)
    unknown = sorted(k for k in data if k not in names)
    if unknown:
        raise ConfigError(f"--config {value}: no option {', '.join(map(repr, unknown))} for "
                          f"`vadpipe {ctx.command_path.split(' ', 1)[-1]}`; options: "
                          f"{', '.join(sorted({n for n in names.values()}))}")
    defaults = dict(ctx.default_map or {})
    for key, v in data.items():
        defaults[names[key]] = v
    ctx.default_map = defaults


def effective_config_path(out: str | os.PathLike, command: str) -> Path:
    """Where a command writes its effective options: ``OUT/<command>.yaml``."""
    return Path(out) / f"{command.replace(' ', '-')}.yaml"


def _plain(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return v


def _write_effective(callback: Callable[..., Any]) -> Callable[..., Any]:
    """``callback`` that first writes the command's effective options to ``OUT/<command>.yaml``."""

    def run(**kwargs: Any) -> Any:
        out = kwargs.get("out")
        if out:
            import yaml

            from vadpipe.manifests.atomic import atomic_write_text, ensure_writable_dir

            path = click.get_current_context().command_path
            name = path.split(" ", 1)[1] if " " in path else path
            settings = {k: _plain(v) for k, v in kwargs.items() if k not in _NOT_SETTINGS}
            ensure_writable_dir(out)
            atomic_write_text(effective_config_path(out, name),
                              f"# vadpipe {name}: the effective options of the last run (use it with --config)\n"
                              + yaml.safe_dump(settings, sort_keys=False))
        return callback(**kwargs)

    return functools.update_wrapper(run, callback)


def add_config_option(group: click.Group) -> None:
    """Give every command under ``group`` (recursively) a ``--config FILE`` option."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            add_config_option(command)
            continue
        if any(p.name == "config" for p in command.params):
            continue
        command.params.insert(0, click.Option(
            ["--config"], type=click.Path(exists=True, dir_okay=False), is_eager=True, expose_value=False,
            callback=_load, help="YAML or TOML file of this command's options (flags override it); the effective "
                                 "options are written to OUT/<command>.yaml."))
        if command.callback is not None and _writes_a_folder(command):
            command.callback = _write_effective(command.callback)


def _writes_a_folder(command: click.Command) -> bool:
    """Whether ``command`` has an ``out`` option that is a folder (not ``-o FILE``)."""
    out = next((p for p in command.params if p.name == "out"), None)
    return out is not None and isinstance(out.type, click.Path) and not out.type.file_okay
