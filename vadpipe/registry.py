"""One small registry for every named thing a user picks: backbones, heads, decoders, engines, GT kinds.

A :class:`Registry` maps names to entries. Entries are registered by the module that defines
them; a registry given a ``package`` imports every module of that package on its first
lookup, so a new backbone or head is one new file (no list of module names to keep in step),
and an import error in one of them is raised, never swallowed. ``plugins_env`` names an
environment variable listing extra modules (comma-separated) imported the same way.

Iterating a registry gives its names in registration order, so it serves as the choices of
a command-line option and in membership tests (``name in ENGINES``).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from typing import Generic, Iterator, TypeVar

from vadpipe.errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind.

    Args:
        kind: what an entry is, for messages (``"backbone"``).
        package: a package whose modules register entries when imported; imported on first use.
        plugins_env: environment variable naming extra modules to import (comma-separated).
    """

    def __init__(self, kind: str, *, package: str | None = None, plugins_env: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self.plugins_env = plugins_env
        self._entries: dict[str, T] = {}
        self._package_loaded = package is None

    def register(self, name: str, entry: T) -> T:
        """Add (or replace) ``entry`` under ``name``; returns ``entry``."""
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry called ``name``; :class:`ConfigError` naming the registered ones otherwise."""
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise ConfigError(f"unknown {self.kind} {name!r}; registered {self.kind}s: {known}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"

    def _load(self) -> None:
        if not self._package_loaded:
            self._package_loaded = True  # set first: the modules imported below look entries up too
            pkg = importlib.import_module(self.package)  # type: ignore[arg-type]
            for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{info.name}")
        if self.plugins_env:  # read every time: plugins may be named after the first lookup
            for module in filter(None, (m.strip() for m in os.environ.get(self.plugins_env, "").split(","))):
                try:
                    importlib.import_module(module)
                except ImportError as e:
                    raise ConfigError(f"{self.plugins_env} names {module!r}, which cannot be imported: {e}") from e
