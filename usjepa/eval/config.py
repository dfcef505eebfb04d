"""Loading a probe run config (`usjepa probe CONFIG`): YAML, dotted overrides (named entries can be changed or
dropped), the paper's preset, then the typed spec of usjepa.eval.spec. Light: no torch at import.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from usjepa.errors import ConfigError
from usjepa.eval.spec import USJEPA_PRESET, ProbeRunConfig, ProtocolConfig


def probe_spec(cfg: Any) -> ProbeRunConfig:
    """The typed probe spec of a built spec, a merged DictConfig or a plain dict (see usjepa.config.spec_of)."""
    from usjepa.config import spec_of

    return spec_of(cfg, ProbeRunConfig)


_DROPPABLE = ("datasets", "encoders")  # name-keyed mappings whose entries an override may remove


def _drop_entry(cfg: DictConfig, ov: str) -> bool:
    """Handle `~datasets.NAME` / `datasets.NAME=null` (also for encoders): remove the entry; False if not a drop."""
    key, value = (ov[1:], None) if ov.startswith("~") else (ov.split("=", 1) + [""])[:2]
    parts = key.split(".")
    if len(parts) != 2 or parts[0] not in _DROPPABLE or not (ov.startswith("~") or value.strip() in ("null", "~")):
        return False
    mapping = cfg[parts[0]]
    if parts[1] not in mapping:
        close = difflib.get_close_matches(parts[1], list(mapping), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"cannot drop {key}: there is no {parts[0][:-1]} '{parts[1]}' (have: "
                          f"{', '.join(mapping)}){hint}")
    del mapping[parts[1]]
    return True


def load_probe_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Load a probe config; overrides may address named entries (`encoders.salt.path=...`), drop them
    (`datasets.aul=null` or `~datasets.aul`), and `select_datasets=[a,b]` keeps only the named datasets."""
    from usjepa.config import apply_override, load_config

    cfg = load_config(path, (), schema=ProbeRunConfig)
    for ov in overrides:
        if not _drop_entry(cfg, ov):
            cfg = apply_override(cfg, ov, "e.g. protocol.seeds=[0], or ~datasets.NAME to drop a dataset")
    if cfg.select_datasets:
        unknown = [n for n in cfg.select_datasets if n not in cfg.datasets]
        if unknown:
            raise ConfigError(f"select_datasets names unknown dataset(s) {unknown}; this config has: "
                              f"{', '.join(cfg.datasets)}")
        for name in [n for n in cfg.datasets if n not in cfg.select_datasets]:
            del cfg.datasets[name]
    if cfg.protocol.preset == "usjepa":
        apply_usjepa_preset(cfg)
    probe_spec(cfg)  # every choice and range checked now, before anything runs
    return cfg


def apply_usjepa_preset(cfg: DictConfig) -> None:
    """Pin the paper's recipe on every protocol key still at its schema default (values the user set win)."""
    defaults = ProtocolConfig()
    for k, v in USJEPA_PRESET.items():
        current = OmegaConf.to_container(cfg.protocol[k]) if OmegaConf.is_list(cfg.protocol[k]) else cfg.protocol[k]
        if current == getattr(defaults, k):
            cfg.protocol[k] = v
