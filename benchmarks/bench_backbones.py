"""Forward+backward time per sample of the backbones on CPU (fp32 and bf16 autocast).

    python benchmarks/bench_backbones.py                       # hpcdiff only
    /tmp/refvenv/bin/python benchmarks/bench_backbones.py --reference   # side by side

With ``--reference`` (and ``physicsnemo`` importable) the same architecture with identical
arguments is built from PhysicsNeMo, both run interleaved in one process, and the ratio
reference_ms / hpcdiff_ms is printed (> 1: hpcdiff is faster). Timings on a shared machine
are noisy: compare ratios from the same run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from hpcdiff.models.registry import create_model, model_config

CASES = ("SongUNet-S", "DiT-S/4")


def _reference(name: str, resolution: int, channels: int, amp: bool):
    """PhysicsNeMo's model of the same architecture and arguments."""
    family, args = model_config(name)
    if family == "DiT":
        from physicsnemo.models.dit import DiT

        return DiT(input_size=resolution, in_channels=channels, out_channels=channels, **args)
    from physicsnemo.models.diffusion_unets import SongUNet

    return SongUNet(
        img_resolution=resolution, in_channels=channels, out_channels=channels, amp_mode=amp,
        **args,
    )  # fmt: skip


def _step(model, x: torch.Tensor, t: torch.Tensor, bf16: bool) -> float:
    """Seconds for one forward + backward pass."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    for p in model.parameters():
        p.grad = None
    start = time.perf_counter()
    with autocast:
        y = model(x, t, None)
    y.float().square().mean().backward()
    return time.perf_counter() - start


def _bench(models: dict, x, t, bf16: bool, warmup: int, repeats: int) -> dict[str, float]:
    """Best-of-repeats ms per sample (interference only adds time), models interleaved."""
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(warmup + repeats):
        for key, model in models.items():
            dt = _step(model, x, t, bf16)
            if i >= warmup:
                times[key].append(dt)
    return {k: 1e3 * min(v) / x.shape[0] for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="also time PhysicsNeMo")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--models", nargs="+", default=list(CASES))
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    ref_ok = False
    if args.reference:
        try:
            import physicsnemo  # noqa: F401

            ref_ok = True
        except ImportError:
            print("physicsnemo is not importable: timing hpcdiff only")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    header = f"{'model':<11} {'res':>4} {'prec':<5} {'params':>11} {'hpcdiff ms/sample':>18}"
    print(header + ("  reference ms/sample  ratio ref/hpcdiff" if ref_ok else ""))
    for name in args.models:
        for res in args.resolutions:
            for prec in args.precisions:
                bf16 = prec == "bf16"
                torch.manual_seed(0)
                models = {"hpcdiff": create_model(name, resolution=res, in_channels=args.channels)}
                if ref_ok:
                    torch.manual_seed(0)
                    models["ref"] = _reference(name, res, args.channels, amp=bf16)
                for m in models.values():
                    m.train()
                x = torch.randn(args.batch, args.channels, res, res)
                t = torch.rand(args.batch) + 0.1
                ms = _bench(models, x, t, bf16, args.warmup, args.repeats)
                n = models["hpcdiff"].num_parameters()
                line = f"{name:<11} {res:>4} {prec:<5} {n:>11,} {ms['hpcdiff']:>18.1f}"
                if ref_ok:
                    line += f"  {ms['ref']:>20.1f}  {ms['ref'] / ms['hpcdiff']:>18.2f}"
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
