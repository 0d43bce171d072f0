"""Files written atomically get the mode any other new file gets under the umask."""

import os
import stat

import pytest
import torch

from hpcdiff.core import Module


class _Tiny(Module):
    def __init__(self, n: int = 3) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(n))


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_module_save_mode_follows_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        saved = _Tiny().save(tmp_path / "net.mdlus")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what open() gives any other file of the run
    finally:
        os.umask(old)
    mode = stat.S_IMODE(saved.stat().st_mode)
    assert mode == 0o666 & ~mask
    assert mode == stat.S_IMODE(plain.stat().st_mode)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
