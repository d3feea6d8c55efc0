"""Typed configuration: frozen section dataclasses (:mod:`.schema`) and the three presets (:mod:`.presets`).

Layer: the bottom of the package, beside ``data`` and ``runs``; it imports nothing from the library.
"""

from .presets import PRESETS, RECONSTRUCTED, config_from_dict, get_config, parse_set_args
from .schema import (
                     AUDIT_VARIANTS,
                     DEFAULT_PRESET,
                     PRESET_NAMES,
                     Config,
                     ConfigError,
                     DataConfig,
                     EvalConfig,
                     LossConfig,
                     ModelConfig,
                     StageConfig,
)

__all__ = ["AUDIT_VARIANTS", "DEFAULT_PRESET", "PRESET_NAMES", "PRESETS", "RECONSTRUCTED", "Config", "ConfigError",
           "DataConfig", "EvalConfig", "LossConfig", "ModelConfig", "StageConfig", "config_from_dict", "get_config",
           "parse_set_args"]
