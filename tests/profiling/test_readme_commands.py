"""profiling/README.md's "Exact commands" block is the list of commands the profiling tests run
(profhelpers.COMMANDS, run through profhelpers.readme_run), and its range table is
hpcdiff.nvtx.RANGE_NAMES."""

import re
import shlex

from profhelpers import COMMANDS, PROFILING, readme_commands

from hpcdiff.nvtx import RANGE_NAMES


def test_readme_block_is_exactly_the_tested_commands():
    tested = sorted(shlex.split(c) for c in COMMANDS.values())
    assert sorted(readme_commands()) == tested


def test_block_parser_joins_continuations_and_drops_comments(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("## Exact commands\n\n```bash\n# a comment\nrun a \\\n    'b c'  # note\n"
                      "\nX=1 other\n```\n\n```bash\nnot this\n```\n")  # fmt: skip
    assert readme_commands(readme) == [["run", "a", "b c"], ["X=1", "other"]]


def test_readme_range_table_is_range_names():
    text = (PROFILING / "README.md").read_text()
    section = text.split("\n## Range names\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| (.+) \|$", section, re.M)
    assert dict(rows) == RANGE_NAMES and len(rows) == len(RANGE_NAMES)
