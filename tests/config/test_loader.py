"""Config loader: types, unknown keys, overrides, and error messages that name the key."""

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from hpcdiff.config import ConfigError, apply_overrides, from_dict, read_yaml, to_dict, write_yaml


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    kind: Literal["adamw", "sgd"] = "adamw"

    def validate(self):
        if self.lr <= 0:
            raise ConfigError(f"config key 'optim.lr' must be > 0, got {self.lr}")


@dataclass
class Root:
    name: str
    optim: Optim = field(default_factory=Optim)
    steps: int = 10
    grid: list[int] = field(default_factory=lambda: [1, 1])
    note: Optional[str] = None


def test_builds_nested_sections_with_defaults_and_int_to_float():
    cfg = from_dict(Root, {"name": "x", "optim": {"lr": 1}, "grid": [2, 3]})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.grid == [2, 3] and cfg.optim.betas == (0.9, 0.999) and cfg.note is None


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "x", "optim": {"lrr": 1}}, "'optim.lrr' is unknown; allowed keys: .*'lr'"),
        ({"name": "x", "steps": "ten"}, "'steps': expected an integer, got 'ten'"),
        ({"name": "x", "steps": True}, "'steps': expected an integer"),
        ({"name": "x", "optim": {"kind": "adam"}}, r"'optim.kind': 'adam' is not one of \['adamw'"),
        ({"name": "x", "grid": [1, "a"]}, r"'grid\[1\]': expected an integer"),
        ({"name": "x", "optim": {"betas": [0.9]}}, "'optim.betas': expected 2 items"),
        ({"name": "x", "optim": {"lr": -1}}, "'optim.lr' must be > 0"),
        ({}, "'name' is required"),
        ({"name": "x", "optim": 3}, "section 'optim' must be a mapping"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Root, data)


def test_dotted_overrides_parse_yaml_values():
    data = apply_overrides({"name": "x"}, ["optim.lr=2e-4", "grid=[2, 2]", "note=hello"])
    cfg = from_dict(Root, data)
    assert cfg.optim.lr == 2e-4 and cfg.grid == [2, 2] and cfg.note == "hello"
    with pytest.raises(ConfigError, match="must look like"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(ConfigError, match="'name' is not a section"):
        apply_overrides({"name": "x"}, ["name.first=1"])


def test_yaml_round_trip(tmp_path):
    cfg = from_dict(Root, {"name": "run", "optim": {"lr": 0.5}})
    write_yaml(cfg, tmp_path / "c.yaml")
    again = from_dict(Root, read_yaml(tmp_path / "c.yaml"))
    assert to_dict(again) == to_dict(cfg)
    (tmp_path / "bad.yaml").write_text("a: [1, 2")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        read_yaml(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="not found"):
        read_yaml(tmp_path / "none.yaml")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "x", "optim": {"kind": True}}, r"'optim.kind': True is not one of"),
        ({"name": "x", "optim": {"lr": 10**400}}, "'optim.lr': .* is too large for a float"),
        ({"name": "x", "optim": {"lr": float("nan")}}, "'optim.lr': expected a number, got nan"),
        ({"name": "x", 1: 2}, "config key '1' is unknown"),
    ],
)
def test_literals_match_by_type_and_numbers_are_finite(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Root, data)


def test_stage_literal_rejects_equal_values_of_another_type():
    @dataclass
    class Zero:
        stage: Literal[0, 1, 2, 3] = 0
        extra: dict[str, int] = field(default_factory=dict)

    assert from_dict(Zero, {"stage": 3}).stage == 3
    for value in (False, 3.0):
        with pytest.raises(ConfigError, match="'stage'"):
            from_dict(Zero, {"stage": value})
    with pytest.raises(ConfigError, match=r"'extra \(key 1\)': expected str"):
        from_dict(Zero, {"extra": {1: 2}})


def test_yaml_duplicate_keys_bad_bytes_and_override_values(tmp_path):
    (tmp_path / "dup.yaml").write_text("name: a\noptim:\n  lr: 1\nname: b\n")
    with pytest.raises(ConfigError, match="dup.yaml: invalid YAML: .*'name' is given twice"):
        read_yaml(tmp_path / "dup.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00name")
    with pytest.raises(ConfigError, match="bin.yaml: cannot read"):
        read_yaml(tmp_path / "bin.yaml")
    with pytest.raises(ConfigError, match="override 'grid=\\[1,': the value is not valid YAML"):
        apply_overrides({}, ["grid=[1,"])
    assert apply_overrides({"optim": None}, ["optim.lr=2"]) == {"optim": {"lr": 2}}
