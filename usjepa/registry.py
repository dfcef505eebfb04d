"""Name registries: the one list of the names a config key accepts, and where each implementation lives.

A registry maps a name to a `module:attribute` target that is imported only when the implementation is
needed, plus a few facts the config checks read (e.g. whether an objective needs a frozen teacher). The
config layer validates against the names without importing torch; builders `get` the implementation.
Adding, say, an objective is its file plus one `register` line in the component's registry module.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from usjepa.spec import choice, fail, key


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "package.module:attribute", or "" for a name that selects a code path but has no object
    summary: str = ""
    facts: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Names of one kind of component (objectives, losses, data sources, ...), in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}  # an old name -> the name it was renamed to (still accepted)

    def register(self, name: str, target: str = "", summary: str = "", **facts: Any) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = Entry(name, target, summary, dict(facts))

    def alias(self, old: str, new: str) -> None:
        """Accept `old`, a former name of `new`, wherever `new` is accepted (configs keep working after a rename)."""
        if new not in self._entries or old in self._entries:
            raise ValueError(f"{self.kind} alias '{old}' -> '{new}' needs '{new}' registered and '{old}' free")
        self._aliases[old] = new

    def canonical(self, name: str) -> str:
        """The current name of `name` (itself unless it is a former name)."""
        return self._aliases.get(name, name)

    def unregister(self, name: str) -> None:
        """Drop `name` (a test's or a plug-in's temporary entry); KeyError when it is not registered."""
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def entry(self, name: str) -> Entry:
        name = self.canonical(name)
        if name not in self._entries:
            choice(name, self._entries, self.kind)
        return self._entries[name]

    def fact(self, name: str, fact: str, default: Any = None) -> Any:
        return self.entry(name).facts.get(fact, default)

    def check(self, value: str, key_name: str) -> None:
        """ConfigError naming `key_name` (relative to the spec being built) when `value` is not registered."""
        if value in self:
            return
        close = difflib.get_close_matches(str(value), [*self._entries, *self._aliases], n=1)  # former names too
        hint = f"; did you mean '{self.canonical(close[0])}'?" if close else ""
        fail(f"{key(key_name)}='{value}' is not one of {', '.join(self._entries)}{hint}")

    def get(self, name: str, fact: str = "") -> Any:
        """The implementation registered under `name` (imported now); with `fact`, the object that fact names
        (a `module:attribute` string too, e.g. a second hook of the same component)."""
        target = self.fact(name, fact, "") if fact else self.entry(name).target
        if not target:
            what = f"'{fact}' object" if fact else "implementation object"
            raise LookupError(f"{self.kind} '{name}' has no {what}")
        module, _, attr = target.partition(":")
        obj = importlib.import_module(module)
        return getattr(obj, attr) if attr else obj
