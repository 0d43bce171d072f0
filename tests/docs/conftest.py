"""Shared set-up of the docs tests: the quickstart state pages start from, the per-page counts."""

import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `docsrun`
from docsrun import make_scratch, shell_env

COUNTS: dict[str, tuple[int, int]] = {}  # page -> (blocks executed, blocks checked only)


@pytest.fixture(scope="session")
def quickstart_state(tmp_path_factory):
    """A scratch directory after `make quickstart` (the README's and quickstart.md's first
    command, run here once for every page, scaled): data/quickstart and a trained, sampled and
    evaluated runs/quickstart."""
    work = make_scratch(tmp_path_factory.mktemp("docs") / "quickstart")
    out = subprocess.run(
        ["make", "quickstart"], cwd=work, env=shell_env(work),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, f"quickstart failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return work


def copy_quickstart(src: Path, work: Path) -> None:
    for name in ("data", "runs"):
        shutil.copytree(src / name, work / name, symlinks=True)


def write_physicsnemo_files(work: Path) -> None:
    """corrdiff_diffusion.mdlus in PhysicsNeMo's layout (a small SongUNet with random weights)
    and my_project/ with code written against physicsnemo.diffusion."""
    import torch

    from hpcdiff.models import SongUNet

    torch.manual_seed(0)
    net = SongUNet(img_resolution=16, in_channels=3, out_channels=2, model_channels=16,
                   channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8])  # fmt: skip
    blob = io.BytesIO()
    torch.save(net.state_dict(), blob)
    spec = {"__name__": "SongUNet", "__module__": "physicsnemo.models.diffusion_unets.song_unet",
            "__args__": net.init_args}  # fmt: skip
    with zipfile.ZipFile(work / "corrdiff_diffusion.mdlus", "w") as zf:
        zf.writestr("args.json", json.dumps(spec))
        zf.writestr("metadata.json", json.dumps({"physicsnemo_version": "2.2.2"}))
        zf.writestr("model.pt", blob.getvalue())
    (work / "my_project").mkdir()
    (work / "my_project" / "sample.py").write_text(
        "from physicsnemo.diffusion.samplers import sample\n"
        "from physicsnemo.diffusion.noise_schedulers import EDMNoiseScheduler\n"
    )


def pytest_terminal_summary(terminalreporter):
    if not COUNTS:
        return
    terminalreporter.section("docs as tests: blocks executed / checked only, per page")
    for page, (executed, checked) in sorted(COUNTS.items()):
        terminalreporter.write_line(f"{page:<32} {executed:>3} executed {checked:>3} checked only")
    executed = sum(e for e, _ in COUNTS.values())
    checked = sum(c for _, c in COUNTS.values())
    terminalreporter.write_line(f"{'total':<32} {executed:>3} executed {checked:>3} checked only")
