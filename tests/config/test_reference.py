"""The generated config reference: docs/configs.md is current and every key has a meaning."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from hpcdiff.config.reference import field_comments, main, render
from hpcdiff.experiment.config import TrainConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "configs.md"


@dataclass
class Inner:
    """Section ``inner``: a nested section."""

    depth: int = 2  # how deep


@dataclass
class Section:
    """Section ``demo``: fields documented in every supported way."""

    plain: int = 1  # a trailing comment
    # a comment block
    # above the field
    above: str = "x"
    multi: dict[str, int] = field(
        default_factory=lambda: {"alpha": 1, "beta": 2, "gamma": 3, "delta": 4, "epsilon": 5}
    )  # after a multi-line default
    tool: float = 0.5  # pragma: no cover
    mode: Literal["a", "b"] | None = None  # one | two
    inner: Inner = field(default_factory=Inner)


@dataclass
class Root:
    demo: Section = field(default_factory=Section)
    late: Inner = field(default_factory=Inner)  # a section added later is picked up


def test_field_comments_trailing_above_and_multiline():
    assert field_comments(Section) == {
        "plain": "a trailing comment",
        "above": "a comment block above the field",
        "multi": "after a multi-line default",
        "mode": "one | two",
    }


def test_render_walks_nested_sections_with_types_and_defaults():
    text = render(Root)
    assert "## `demo`\n\nFields documented in every supported way. (`" in text
    assert "| `demo.plain` | `int` | `1` | a trailing comment |" in text
    multi = "{alpha: 1, beta: 2, gamma: 3, delta: 4, epsilon: 5}"
    assert f"| `demo.multi` | `dict[str, int]` | `{multi}` | after a multi-line default |" in text
    assert "| `demo.mode` | `'a' \\| 'b' \\| null` | `null` | one \\| two |" in text
    assert "| `demo.tool` | `float` | `0.5` |  |" in text  # tool comments are not meanings
    assert "### `demo.inner`" in text and "| `demo.inner.depth` | `int` | `2` | how deep |" in text
    assert "## `late`" in text and "| `late.depth` |" in text


def test_docs_configs_md_is_up_to_date():
    assert DOC.is_file() and DOC.read_text() == render(TrainConfig), (
        "docs/configs.md is stale: run `hpcdiff config reference -o docs/configs.md`"
    )


def test_every_config_key_has_a_meaning():
    rows = [line for line in render(TrainConfig).splitlines() if line.startswith("| `")]
    undocumented = [row.split("|")[1].strip() for row in rows if row.endswith("|  |")]
    assert len(rows) > 50
    assert not undocumented, f"add a `# comment` to these config fields: {undocumented}"


def test_check_flags_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "configs.md"
    stale.write_text("old\n")
    assert main(["--check", str(stale)], TrainConfig) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["-o", str(stale)], TrainConfig) == 0
    assert main(["--check", str(stale)], TrainConfig) == 0


@pytest.mark.parametrize("name", ["data", "run", "zero", "sample", "domain"])
def test_every_section_of_the_train_config_is_listed(name):
    assert f"\n## `{name}`\n" in render(TrainConfig)
