"""Typed configuration: frozen section dataclasses (:mod:`.schema`) and the three presets (:mod:`.presets`).

Layer: the bottom of the package, beside ``data`` and ``runs``; it imports nothing from the library.
"""

from .coerce import ConfigError
from .presets import PRESETS, RECONSTRUCTED, config_from_dict, get_config, parse_set_args
from .schema import (
    AUDIT_DECODINGS,
    DEFAULT_PRESET,
    PRESET_NAMES,
    RENAMED_KEYS,
    AuditConfig,
    CompareConfig,
    Config,
    DataConfig,
    GenerationConfig,
    JudgesConfig,
    LossConfig,
    ModelConfig,
    StageConfig,
    StatsConfig,
)

__all__ = ["AUDIT_DECODINGS", "DEFAULT_PRESET", "PRESET_NAMES", "PRESETS", "RECONSTRUCTED", "RENAMED_KEYS",
           "AuditConfig", "CompareConfig", "Config", "ConfigError", "DataConfig", "GenerationConfig", "JudgesConfig",
           "LossConfig", "ModelConfig", "StageConfig", "StatsConfig", "config_from_dict", "get_config",
           "parse_set_args"]
