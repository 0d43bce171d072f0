"""Property-based robustness of the config loader: any YAML text, nested mapping, override or
value either builds a valid :class:`TrainConfig` or raises :class:`ConfigError`, never another
exception. Fixed budget, derandomized (tests/conftest.py): the same examples on every run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import types
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from hpcdiff.config import ConfigError, from_dict
from hpcdiff.data.cf import parse_time
from hpcdiff.experiment.config import TrainConfig, load_config

COUNTER = itertools.count()
BASE = {"data": {"files": ["data/x_*.nc"], "variables": ["t2m", "tp"]}}


def _keys(cls: type, prefix: str = "") -> dict[str, typing.Any]:
    """Every dotted key of the dataclass ``cls`` with its annotation."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        out[key] = hints[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_keys(hints[f.name], f"{key}."))
    return out


TYPES = _keys(TrainConfig)
KEYS = sorted(TYPES)
NAMES = sorted({part for key in KEYS for part in key.split(".")})
PLAUSIBLE = [
    "edm", "heun", "hune", "tile", "patch", "nvme", "cpu", "none", "latest", "bf16", "cosine",
    "SongUNet-S", "DiT-S/4", "t2m", "tp", "1e-4", "nan", "inf", "-1", "", "2020-01-01",
    "2020-01-01T00:00+01:00", "2020-02-30", "12:00", "data/x_*.nc", "runs",
]  # fmt: skip
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 70),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(PLAUSIBLE),
    st.text(max_size=6),
    st.dates(),
    st.datetimes(timezones=st.sampled_from([None, dt.timezone.utc])),
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


def typed(tp: typing.Any) -> st.SearchStrategy:
    """Values of the annotation ``tp``, edge cases included (what a near-miss config holds)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return LEAVES
    if dataclasses.is_dataclass(tp):
        return st.just({})
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([typed(a) for a in args])
    if origin is tuple and args and args[-1] is not Ellipsis:
        return st.tuples(*[typed(a) for a in args]).map(list)
    if origin in (list, tuple):
        return st.lists(typed(args[0]) if args else LEAVES, max_size=3)
    if origin is dict:
        return st.dictionaries(st.sampled_from(NAMES), typed(args[1]), max_size=2)
    simple = {
        type(None): st.none(),
        bool: st.booleans(),
        int: st.integers(-2, 70),
        float: st.sampled_from([0.0, 1e-4, 0.5, 1.0, 2.0, -1.0, 1e6]),
        str: st.sampled_from(PLAUSIBLE),
    }
    return simple[tp]


def _set(data: dict, dotted: str, value: typing.Any) -> None:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = value


@st.composite
def mutated_configs(draw) -> dict:
    """The base config with real (or misspelled) keys set to generated values."""
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for _ in range(draw(st.integers(1, 4))):
        key = draw(
            st.sampled_from(KEYS)
            | st.builds("{}.{}".format, st.sampled_from(KEYS), st.text(max_size=3))
        )
        _set(data, key, draw(VALUES))
    return data


def _valid_or_config_error(build: typing.Callable[[], TrainConfig]) -> None:
    try:
        cfg = build()
    except ConfigError as err:
        assert str(err)
        return
    assert isinstance(cfg, TrainConfig)
    cfg.validate()  # a config that loaded is still valid


@given(data=mutated_configs())
def test_mutated_config_is_valid_or_config_error(data):
    _valid_or_config_error(lambda: from_dict(TrainConfig, data))


@given(data=st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=4) | st.integers(), VALUES))
def test_random_mapping_is_valid_or_config_error(data):
    _valid_or_config_error(lambda: from_dict(TrainConfig, {**BASE, **data}))


TIMES = st.one_of(
    st.dates(),
    st.datetimes(
        timezones=st.sampled_from([None, dt.timezone.utc, dt.timezone(dt.timedelta(hours=2))])
    ),
    st.datetimes().map(dt.datetime.isoformat),
    st.datetimes(timezones=st.just(dt.timezone.utc)).map(dt.datetime.isoformat),
    st.sampled_from(PLAUSIBLE),
    LEAVES,
)


@given(train=st.lists(TIMES, max_size=3) | TIMES, valid=st.lists(TIMES, min_size=2, max_size=2))
def test_time_ranges_are_valid_or_config_error(train, valid):
    data = {"data": {**BASE["data"], "train_time": train, "valid_time": valid}}
    _valid_or_config_error(lambda: from_dict(TrainConfig, data))


@pytest.mark.parametrize(
    "given, expected",
    [([dt.date(2000, 1, 1), "2000-01-01T00:00:00+00:00"], ("2000-01-01", "2000-01-01T00:00:00")),
     (["2020-01-01T06:00", dt.datetime(2020, 1, 1, 8, tzinfo=dt.timezone(dt.timedelta(hours=2)))],
      ("2020-01-01T06:00", "2020-01-01T06:00:00")),
     ([20200101, "20200102T00Z"], ("2020-01-01", "2020-01-02T00:00:00"))],
)  # fmt: skip
def test_time_ranges_mix_dates_and_offsets_as_utc(given, expected):
    """Offsets become naive UTC; the reader (``parse_time``) then finds the same instant."""
    cfg = from_dict(TrainConfig, {"data": {**BASE["data"], "valid_time": given}})
    assert cfg.data.valid_time == expected
    end = given[1] if isinstance(given[1], dt.datetime) else dt.datetime.fromisoformat(given[1])
    utc = end.replace(tzinfo=end.tzinfo or dt.timezone.utc).timestamp()
    assert parse_time(cfg.data.valid_time[1], "standard") == utc


@pytest.mark.parametrize(
    "given, message",
    [(["2020-01-01T01:00+02:00", "2019-12-31T22:00"], "start 2019-12-31T23:00:00 is after end"),
     ([dt.time(6), "2020-01-01"], "expected an ISO date or date-time"),
     ([1.5, "2020-01-01"], "expected an ISO date or date-time .*, got 1.5"),
     ([True, "2020-01-01"], "got True"),
     ([2020, "2020-01-01"], "2020 is not an ISO date"),
     (["0001-01-01T00:00+01:00", "2020-01-01"], "outside the years 1-9999 in UTC")],
)  # fmt: skip
def test_time_ranges_reject_other_values_naming_the_key(given, message):
    with pytest.raises(ConfigError, match=f"config key 'data.train_time': .*{message}"):
        from_dict(TrainConfig, {"data": {**BASE["data"], "train_time": given}})


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("property_config")


OVERRIDES = st.lists(
    st.builds(
        "{}={}".format,
        st.sampled_from(KEYS) | st.text(max_size=5),
        st.sampled_from(PLAUSIBLE + ["[1, 2]", "[1,", "{a: 1}", "null", "true", "@x", "'q"])
        | st.text(max_size=6),
    )
    | st.text(max_size=8),
    max_size=3,
)


@given(data=mutated_configs(), overrides=OVERRIDES)
def test_yaml_file_with_overrides_is_valid_or_config_error(folder, data, overrides):
    path = folder / f"c{next(COUNTER)}.yaml"
    path.write_text(yaml.safe_dump(data))
    _valid_or_config_error(lambda: load_config(path, overrides))


@given(text=st.text(max_size=80) | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
def test_arbitrary_yaml_text_is_valid_or_config_error(folder, text):
    path = folder / f"t{next(COUNTER)}.yaml"
    path.write_bytes(("data: {files: [a.nc], variables: [v]}\n" + text).encode("utf-8", "replace"))
    _valid_or_config_error(lambda: load_config(path))


def test_the_base_config_is_valid():
    """The properties perturb a config that loads."""
    cfg = from_dict(TrainConfig, BASE)
    assert cfg.data.variables == ["t2m", "tp"] and cfg.zero.stage == 0
