"""The ``vadpipe`` command group and the parsing helpers every command shares.

Commands are thin: they parse arguments and call library functions (which tests call too).
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Callable, Iterable

import click

from vadpipe import __version__
from vadpipe.errors import VadpipeError

__all__ = ["main", "fail", "choices_of", "parse_overrides", "parse_devices", "parse_resize"]


def fail(e: Exception, code: int = 2) -> None:
    click.echo(f"error: {e}", err=True)
    sys.exit(code)


class _LazyChoice(click.Choice):
    """A :class:`click.Choice` whose values come from the library, read when first needed
    (help, completion, parsing), so that starting the CLI imports no model code."""

    def __init__(self, load: Callable[[], Iterable[str]], case_sensitive: bool = True) -> None:
        self._load = load
        self._values: tuple[str, ...] | None = None
        self.case_sensitive = case_sensitive

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        if self._values is None:
            self._values = tuple(str(v) for v in self._load())
        return self._values

    @choices.setter
    def choices(self, values: Iterable[str]) -> None:
        self._values = tuple(values)


def choices_of(module: str, name: str, convert: Callable[[Iterable], Iterable[str]] = lambda v: v) -> click.Choice:
    """Click choices from the library constant ``module.name`` (e.g. the decoder names),
    imported only when click needs them."""
    return _LazyChoice(lambda: convert(getattr(importlib.import_module(module), name)))


class _Commands(click.Group):
    """The ``vadpipe`` group: a user mistake (any :class:`~vadpipe.errors.VadpipeError` a command
    raises) becomes one ``error: ...`` line and exit code 2, for every command in one place."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VadpipeError as e:
            fail(e)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vadpipe")
@click.option("-v", "--verbose", is_flag=True, help="Log debugging details.")
def main(verbose: bool) -> None:
    """vadpipe: raw videos → features → anomaly scores."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def parse_overrides(items: tuple[str, ...]) -> dict:
    import json

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def parse_devices(gpus: str | None, devices: str | None) -> tuple[str, ...]:
    """``--gpus 0,1`` → ``("cuda:0", "cuda:1")``; ``--devices cpu,cpu`` as given."""
    if gpus and devices:
        raise VadpipeError("give --gpus or --devices, not both")
    if gpus:
        try:
            return tuple(f"cuda:{int(g)}" for g in gpus.split(",") if g.strip())
        except ValueError:
            raise VadpipeError(f"--gpus takes GPU indices like 0,1,2, got {gpus!r}") from None
    if devices:
        return tuple(d.strip() for d in devices.split(",") if d.strip())
    return ()


def parse_resize(text: str) -> int | tuple[int, int]:
    from vadpipe.errors import ConfigError

    try:
        if "x" in text.lower():
            h, w = text.lower().split("x")
            return int(h), int(w)
        return int(text)
    except ValueError:
        raise ConfigError(f"--resize takes N or HxW (e.g. 256 or 256x340), got {text!r}") from None


if __name__ == "__main__":
    main()
