"""Helpers shared by the profiling tests (imported through conftest's sys.path entry)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROFILING = ROOT / "profiling"
TORCHRUN = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2"]
STEPS = 2


# All that Nsight Systems 2022.4 printed when it failed before starting the command (once in a
# CI run: no report, the profiled command never started; most likely its CLI losing the
# connection to its session daemon). An nsys command failing with exactly this runs once more.
NSYS_DAEMON_EOF = "End of file"


def run(cmd, cwd, env=None, timeout=300, check=True):
    """Run ``cmd``; with ``check``, fail with its output when it exits non-zero."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{os.environ['PATH']}",
                **(env or {})}  # fmt: skip
    words = [str(c) for c in cmd]

    def once():
        return subprocess.run(words, cwd=cwd, env=full_env, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip

    out = once()
    nsys = any(Path(w).name in ("nsys", "nsys_profile.sh") for w in words)
    if nsys and out.returncode != 0 and out.stderr.strip() == NSYS_DAEMON_EOF:
        print(f"{words[0]}: nsys failed at start printing only {NSYS_DAEMON_EOF!r}; "
              "running it once more", file=sys.stderr)  # fmt: skip
        out = once()
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


DOCTOR = [str(BIN / "hpcdiff"), "profile", "doctor"]
NSYS = ["nsys", "profile", "-t", "nvtx,osrt", "-s", "none", "--cpuctxsw=none", "-f", "true"]


# The commands of profiling/README.md's "Exact commands" block, as written there; the tests run
# them through `readme_run` and test_readme_commands.py checks the two lists are the same.
COMMANDS = {
    "rec_train": "profiling/nvtx_record --out logs/train -- torchrun --standalone "
    "--nproc-per-node 2 -m hpcdiff train --config tiny.yaml profiling.nvtx=true",
    "rec_zero3": "profiling/nvtx_record --out logs/zero3 -- torchrun --standalone "
    "--nproc-per-node 2 -m hpcdiff train --config tiny.yaml profiling.nvtx=true "
    "profiling.model_ranges=true zero.stage=3 run.name=zero3",
    "rec_deepspeed": "python profiling/summarize.py --domain DeepSpeed logs/zero3",
    "rec_sample": "profiling/nvtx_record --out logs/sample -- hpcdiff sample runs/tiny",
    "rec_sample2": "profiling/nvtx_record --out logs/sample2 -- torchrun --standalone "
    "--nproc-per-node 2 -m hpcdiff sample runs/tiny 'sample.domain_grid=[1,2]' "
    "profiling.model_ranges=true",
    **{
        f"nsys_{launcher}": f"profiling/nsys_profile.sh {launcher} 2 {launcher} -- train "
        f"--config tiny.yaml profiling.nvtx=true run.name={launcher}"
        for launcher in ("torchrun", "srun", "mpirun")
    },
    "nsys_sample": "profiling/nsys_profile.sh torchrun 2 sampling -- sample runs/tiny "
    "'sample.domain_grid=[1,2]' profiling.nvtx=true",
    "sum_torchrun": "python profiling/summarize.py torchrun.sqlite",
    "sum_srun": "python profiling/summarize.py srun_0.csv srun_1.csv",
    "sum_mpirun": "python profiling/summarize.py mpirun_0.csv mpirun_1.csv",
    "sum_sample": "python profiling/summarize.py sampling.sqlite",
    "doctor": "HPCDIFF_NVTX=1 nsys profile -t nvtx,osrt -s none --cpuctxsw=none -f true -o doc "
    "profiling/nsys_compat hpcdiff profile doctor",
}


def readme_commands(path=PROFILING / "README.md"):
    """Token lists of the first bash block after the heading "## Exact commands", with line
    continuations joined and comments dropped."""
    text = path.read_text().split("## Exact commands", 1)[1]
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()
            if shlex.split(line, comments=True)]  # fmt: skip


def readme_run(key, cwd, env=None, **kwargs):
    """Run README command ``key`` in ``cwd``: leading VAR=value words go to the environment,
    ``profiling/...`` is this repository's directory."""
    words = shlex.split(COMMANDS[key])
    env = dict(env or {})
    while re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    words = [str(ROOT / w) if w.startswith("profiling/") else w for w in words]
    return run(words, cwd=cwd, env=env, **kwargs)
