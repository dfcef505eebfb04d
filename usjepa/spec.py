"""Building blocks of the self-validating config specs: checks that name the key, and DictConfig -> spec objects.

Every config section is a `Spec` dataclass whose `check` tests its own choices and ranges with the helpers
here, and which is read-only once built. The loader converts a merged DictConfig into those objects with
`to_spec`, which tells the checks where the section sits (`data.`, `datasets.lesion.data.`), so an error names
the full dotted key. A spec built directly in Python names the bare field. This module imports nothing
heavy (no torch, no omegaconf at import).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from usjepa.errors import ConfigError

_PREFIX: contextvars.ContextVar[str] = contextvars.ContextVar("usjepa_spec_prefix", default="")


class Spec:
    """Base of every config section: a dataclass that checks itself when built and is read-only afterwards.

    Not `dataclass(frozen=True)`: OmegaConf makes the schema of a frozen dataclass read-only, and the YAML / CLI
    layer (and any code that edits an `OmegaConf.structured(...)` config) must stay free to merge and assign.
    """

    def __post_init__(self) -> None:
        self.check()
        object.__setattr__(self, "_sealed", True)

    def check(self) -> None:
        """Raise ConfigError (via the helpers below) for a bad choice or range; sections override this."""

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_sealed", False):
            raise dataclasses.FrozenInstanceError(f"cannot assign to field '{name}' of a built "
                                                  f"{type(self).__name__}; use dataclasses.replace")
        object.__setattr__(self, name, value)


def key(name: str) -> str:
    """The dotted config key of field `name` of the spec being built (`optim.lr` when loading, `lr` when not)."""
    return _PREFIX.get() + name


@contextlib.contextmanager
def section(prefix: str) -> Iterator[None]:
    """Build specs of the section at `prefix` (ends with a dot, or is empty) inside this block."""
    token = _PREFIX.set(prefix)
    try:
        yield
    finally:
        _PREFIX.reset(token)


def closest_hint(value: Any, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(value), [str(n) for n in names], n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def choice(value: Any, choices: Iterable[str], name: str) -> None:
    """`value` is one of `choices` (a registry or a tuple), else a ConfigError naming the key and the closest name."""
    names = tuple(choices)
    if value not in names:
        raise ConfigError(f"{key(name)}='{value}' is not one of {', '.join(names)}{closest_hint(value, names)}")


def each_choice(values: Iterable[Any], choices: Iterable[str], name: str) -> None:
    for v in values:
        choice(v, choices, name)


def at_least(value: float, lo: float, name: str, why: str = "") -> None:
    if value < lo:
        raise ConfigError(f"{key(name)}={value} must be >= {lo:g}{why}")


def positive(value: float, name: str, why: str = "") -> None:
    if not value > 0:
        raise ConfigError(f"{key(name)}={value} must be > 0{why}")


def within(value: float, lo: float, hi: float, name: str, closed: str = "[]") -> None:
    """lo <= value <= hi, with `closed` saying which ends are included: "[]", "[)", "(]" or "()"."""
    ok = (value >= lo if closed[0] == "[" else value > lo) and (value <= hi if closed[1] == "]" else value < hi)
    if not ok:
        raise ConfigError(f"{key(name)}={value} must be in {closed[0]}{lo:g}, {hi:g}{closed[1]}")


def interval(value: Iterable[float], name: str, lo: float = 0.0, hi: float | None = None,
             open_lo: bool = False) -> None:
    """A [lo, hi] pair in order, inside [lo, hi] of the key's valid range (lo excluded with `open_lo`)."""
    v = list(value)
    bad = len(v) != 2 or v[0] > v[1] or (v[0] <= lo if open_lo else v[0] < lo) or (hi is not None and v[1] > hi)
    if bad:
        bounds = f"{lo:g} {'<' if open_lo else '<='} lo <= hi" + (f" <= {hi:g}" if hi is not None else "")
        raise ConfigError(f"{key(name)}={v} must be [lo, hi] with {bounds}")


def fail(message: str) -> None:
    raise ConfigError(message)


def to_spec(node: Any, prefix: str = "") -> Any:
    """A merged (Omega)config node as spec objects: each structured section is built (so it validates) with the
    dotted prefix of where it sits; name-keyed mappings and free-form dicts become dicts, lists become lists."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, DictConfig):
        return node
    schema = OmegaConf.get_type(node)
    if schema is None or not dataclasses.is_dataclass(schema):
        return {str(k): to_spec(node[k], f"{prefix}{k}.") for k in node.keys()}
    values = {f.name: to_spec(node[f.name], f"{prefix}{f.name}.")
              for f in dataclasses.fields(schema) if f.init}
    with section(prefix):
        return schema(**values)


def plain(value: Any) -> Any:
    """A spec (or an OmegaConf node, a mapping, a list) as plain dicts and lists: what config.yaml, checkpoints,
    hashes and submitit jobs store. Fields appear in declaration order, as OmegaConf writes a structured config."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if type(value).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
