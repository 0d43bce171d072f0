"""Helpers shared by the profiling tests (imported through conftest's sys.path entry)."""

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROFILING = ROOT / "profiling"
TORCHRUN = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2"]
STEPS = 2


# Two failures of Nsight Systems 2022.4 before or while starting the profiled command, each seen
# once in a CI run and not reproduced: the CLI printing only "End of file" (most likely losing
# its session daemon) and, with one nsys per rank started at once, a rank's nsys hanging after
# "ProcessWaiter ... sem_open ... No such file or directory" (a named semaphore gone). An nsys
# command failing with exactly one of these runs once more; any other failure fails.
NSYS_DAEMON_EOF = "End of file"
NSYS_SEM_OPEN = "sem_open"


def _run_group(words, cwd, env, timeout):
    """``subprocess.run`` in a new session whose whole process group is killed on timeout (a
    launcher's ranks too); returns (CompletedProcess, timed out)."""
    proc = subprocess.Popen(words, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(words, proc.returncode, stdout, stderr), False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return subprocess.CompletedProcess(words, -signal.SIGKILL, stdout, stderr), True


def run(cmd, cwd, env=None, timeout=300, check=True):
    """Run ``cmd``; with ``check``, fail with its output when it exits non-zero."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{os.environ['PATH']}",
                **(env or {})}  # fmt: skip
    words = [str(c) for c in cmd]
    out, hung = _run_group(words, cwd, full_env, timeout)
    if any(Path(w).name in ("nsys", "nsys_profile.sh") for w in words) and (
        (out.returncode != 0 and out.stderr.strip() == NSYS_DAEMON_EOF)
        or (hung and NSYS_SEM_OPEN in out.stderr)
    ):
        print(f"{words[0]}: a known nsys start-up failure; running it once more:\n{out.stderr}",
              file=sys.stderr)  # fmt: skip
        out, hung = _run_group(words, cwd, full_env, timeout)
    if hung:
        raise subprocess.TimeoutExpired(words, timeout, out.stdout, out.stderr)
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
