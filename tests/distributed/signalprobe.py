"""A rank that records which signals reach it (no torch: starts in a blink under any launcher).

Each rank finds its number from the launcher's variables, appends ``ready RANK PID`` to the file
``$SIGNALPROBE_OUT`` and then ``RANK SIGNAME`` for every SIGTERM, SIGUSR1, SIGUSR2 or SIGINT it
receives; it keeps running until ``$SIGNALPROBE_SECONDS`` (default 60) have passed, so the test
sees whether the launcher forwarded a signal, not whether the launcher died.

:func:`deliver` starts a launcher command with this probe, sends one signal to the launcher
process only and returns what each rank received; ``python signalprobe.py`` prints the table of
docs/preemption.md for the launchers installed here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

RANK_VARS = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID")
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


def rank() -> str:
    return next((os.environ[v] for v in RANK_VARS if v in os.environ), "0")


def write(line: str) -> None:
    fd = os.open(os.environ["SIGNALPROBE_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())  # one write per line: ranks append concurrently
    finally:
        os.close(fd)


def main() -> None:
    me = rank()
    for sig in SIGNALS:
        signal.signal(sig, lambda signum, _frame: write(f"{me} {signal.Signals(signum).name}"))
    write(f"ready {me} {os.getpid()} {os.environ.get('SLURM_JOB_ID', '-')}")
    deadline = time.monotonic() + float(os.environ.get("SIGNALPROBE_SECONDS", "60"))
    while time.monotonic() < deadline:
        time.sleep(0.05)


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def deliver(
    cmd: list[str], sig: signal.Signals, out: Path, env: dict, ranks: int = 2, watch: float = 3
) -> dict:
    """Run ``cmd`` (a launcher starting ``ranks`` probes), send ``sig`` to the launcher process
    alone once every rank is ready, and return {rank: [signal names received]} after ``watch``
    seconds, plus "ended": {rank: seconds after the signal when the rank was gone (killed: the
    probe never exits by itself)} and "launcher": its exit code or None if it still runs.
    Every process the launch started is SIGKILLed by pid before returning."""
    env = {**env, "SIGNALPROBE_OUT": str(out), "SIGNALPROBE_SECONDS": "60"}
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while sum(r[0] == "ready" for r in _lines(out)) < ranks:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{cmd}: ranks did not start: {proc.stderr.read()[-2000:]}")
            time.sleep(0.1)
        rank_pids = {r[1]: int(r[2]) for r in _lines(out) if r[0] == "ready"}
        sent, ended = time.monotonic(), {}
        proc.send_signal(sig)
        while time.monotonic() - sent < watch:
            for rank, pid in rank_pids.items():
                if rank not in ended and not _alive(pid):
                    ended[rank] = round(time.monotonic() - sent, 1)
            time.sleep(0.1)
        got: dict = {r: [] for r in rank_pids}
        for row in _lines(out):
            if row[0] != "ready":
                got[row[0]].append(row[1])
        return {**got, "ended": ended, "launcher": proc.poll()}
    finally:
        pids = [int(r[2]) for r in _lines(out) if r[0] == "ready"]
        for pid in [proc.pid, *pids]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # helpers the launcher started in its session
        except ProcessLookupError:
            pass
        proc.wait()
        for job in {r[3] for r in _lines(out) if r[0] == "ready" and r[3] != "-"}:
            subprocess.run(["scancel", job], env=env, capture_output=True)  # its allocation


def _table() -> None:
    root = Path(__file__).resolve().parents[2]
    py, bindir = sys.executable, Path(sys.executable).parent
    me = str(Path(__file__).resolve())
    launchers = {
        "torchrun": [py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
        "launchers/torchrun.sh": [str(root / "launchers" / "torchrun.sh")],
        "Open MPI mpirun": ["/usr/bin/mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "2"],
        "launchers/mpirun.sh (Open MPI)": [str(root / "launchers" / "mpirun.sh")],
        "MPICH mpiexec": [str(bindir / "mpiexec"), "-n", "2"],
        "launchers/mpirun.sh (MPICH)": [str(root / "launchers" / "mpirun.sh")],
        "srun": ["srun", "-n2"],
        "launchers/srun.sh": [str(root / "launchers" / "srun.sh")],
    }
    env = {
        **os.environ, "NPROC_PER_NODE": "2", "NP": "2", "SRUN_ARGS": "-n2",
        "HPCDIFF_PYTHON": py, "HPCDIFF_SCRIPT": me,
    }  # fmt: skip
    import tempfile

    names = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)
    print("| launcher | " + " | ".join(s.name for s in names) + " |", flush=True)
    for name, cmd in launchers.items():
        run_env = dict(env)
        if "MPICH" in name:
            run_env["MPIRUN"] = str(bindir / "mpiexec")
        elif "Open MPI" in name:
            run_env["MPIRUN"] = "/usr/bin/mpirun"
        if name == "torchrun":
            cmd = [*cmd, me]  # torchrun starts the interpreter itself
        elif not name.startswith("launchers/"):
            cmd = [*cmd, py, me]
        cells = []
        for sig in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
            with tempfile.TemporaryDirectory() as tmp:
                got = deliver(cmd, sig, Path(tmp) / "probe.txt", run_env, watch=12)
            ended, code = got.pop("ended"), got.pop("launcher")
            cell = "; ".join(f"r{r}: {','.join(s) or '-'}" for r, s in sorted(got.items()))
            cell += f"; killed after {sorted(ended.values())} s" if ended else "; ranks alive"
            cells.append(cell + ("; launcher runs" if code is None else f"; launcher exit {code}"))
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    _table() if sys.argv[1:] == ["--table"] else main()
