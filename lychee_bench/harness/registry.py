"""One generic registry for methods, tasks and models.

Entries are lazy ("package.module:Attr" strings, imported on first use) so `lychee-bench list` stays fast and a
broken plugin only breaks itself. Third-party packages add entries through a Python entry-point group.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the closest names."""

    def __init__(self, kind: str, name: str, known: list[str]):
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        self.message = f"unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(sorted(known))}."
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


@dataclass
class Entry:
    """A registered name. Its `description` is the one given at registration, else the loaded object's own
    `description` attribute (read on first use, so listing imports the entries but running one does not import
    the others)."""

    name: str
    target: str | Any  # "module:attr" or the object itself
    given_description: str | None = None
    aliases: tuple[str, ...] = ()
    origin: str | None = None  # where a plugin came from ("plugin from module:attr")

    @property
    def description(self) -> str:
        if self.given_description is not None:
            return self.given_description
        try:
            text = getattr(self.load(), "description", None)
        except Exception as error:  # a broken plugin must not hide the rest of a listing
            text = f"(cannot load {self.target}: {type(error).__name__}: {error})"
        if not isinstance(text, str) or not text:
            text = "(no description)"
        return f"{text} [{self.origin}]" if self.origin else text

    def load(self) -> Any:
        if not isinstance(self.target, str):
            return self.target
        module_name, _, attr = self.target.partition(":")
        obj = importlib.import_module(module_name)
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
        return obj


class Registry:
    """Name -> lazily loaded object, with aliases, entry-point plugins and "did you mean" errors."""

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}
        self._plugins_loaded = entry_point_group is None

    def register(
        self, name: str, target: str | Any, description: str | None = None, aliases: tuple[str, ...] = ()
    ) -> None:
        """Register `target` ("module:attr", imported on first use) as `name`. `description` None: the target's
        own `description` attribute (a method's class holds its one line; the registry does not repeat it)."""
        for key in (name, *aliases):
            if key in self._entries or key in self._aliases:
                owner = self._aliases.get(key, key)
                raise ValueError(
                    f"{self.kind} name {key!r} is already registered (by {owner!r}); "
                    f"choose another name or alias for {name!r}."
                )
        self._entries[name] = Entry(name, target, description, aliases)
        for alias in aliases:
            self._aliases[alias] = name

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name in self._entries or ep.name in self._aliases:
                raise ValueError(
                    f"plugin {ep.value!r} (entry point group {self.entry_point_group!r}) registers "
                    f"{self.kind} {ep.name!r}, which is already taken; rename the entry point."
                )
            self._entries[ep.name] = Entry(ep.name, ep.value, origin=f"plugin from {ep.value}")

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry]:
        self._load_plugins()
        for name in sorted(self._entries):
            yield self._entries[name]

    def resolve(self, name: str) -> str:
        """The canonical name for `name` (an alias is followed); UnknownNameError if absent."""
        self._load_plugins()
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise UnknownNameError(self.kind, name, [*self._entries, *self._aliases])

    def entry(self, name: str) -> Entry:
        return self._entries[self.resolve(name)]

    def get(self, name: str) -> Any:
        return self.entry(name).load()

    def __contains__(self, name: str) -> bool:
        try:
            self.resolve(name)
        except UnknownNameError:
            return False
        return True
