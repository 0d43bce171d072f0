"""The docs tests' per-page counts (the quickstart state pages start from is tests/conftest.py's
``quickstart_state``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `docsrun`
from docsrun import COUNTS


def pytest_terminal_summary(terminalreporter):
    if not COUNTS:
        return
    terminalreporter.section("docs as tests: blocks executed / checked only, per page")
    for page, (executed, checked) in sorted(COUNTS.items()):
        terminalreporter.write_line(f"{page:<32} {executed:>3} executed {checked:>3} checked only")
    executed = sum(e for e, _ in COUNTS.values())
    checked = sum(c for _, c in COUNTS.values())
    terminalreporter.write_line(f"{'total':<32} {executed:>3} executed {checked:>3} checked only")
