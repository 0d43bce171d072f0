"""Typed, validated experiment configs (one dataclass section per component)."""

from hpcdiff.config.loader import (
    ConfigError,
    apply_overrides,
    from_dict,
    read_yaml,
    to_dict,
    write_yaml,
)

__all__ = ["ConfigError", "apply_overrides", "from_dict", "read_yaml", "to_dict", "write_yaml"]
