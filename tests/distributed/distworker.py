"""Tiny seeded training run launched by the multi-process tests under every launcher.

Run as a script on each rank (``python distworker.py --out r.json --stages 0,3``): it trains
:class:`TinyNet` on seeded random data with the same global batch whatever the world size,
and rank 0 writes the losses (global means), the ZeRO memory measurements and its DistEnv to
``--out``. :func:`reference_run` is the same training in one process with plain PyTorch AdamW.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from hpcdiff.core import Module
from hpcdiff.distributed.config import EMAConfig
from hpcdiff.experiment.config import OptimConfig
from hpcdiff.train.lr import lr_at, set_lr

GLOBAL_BATCH = 8
SHAPE = (4, 8, 8)  # C H W
SIGMA = 0.5
# GRAD_CLIP is below the global gradient norms of this training (0.29-0.36 unclipped), so
# every step clips: the distributed runs must clip exactly as torch does.
LR, BETAS, EPS, WEIGHT_DECAY, GRAD_CLIP = 2e-3, (0.9, 0.99), 1e-8, 0.01, 0.2
WARMUP = 2  # optimizer steps of linear LR warm-up (the trainer's hpcdiff.train.lr schedule)
EMA = EMAConfig(halflife_samples=24.0, rampup_ratio=0.5)
OPTIM = OptimConfig(
    lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY, grad_clip=GRAD_CLIP, warmup_steps=WARMUP
)


class PositionalEmbedding(Module):
    """Holds a parameter that only the parent's forward reads (never called itself)."""

    def __init__(self, width: int, size: int) -> None:
        super().__init__()
        self.pos = torch.nn.Parameter(0.02 * torch.randn(1, width, size, size))


class TinyNet(Module):
    """A < 20 k parameter conv denoiser with a positional embedding and a buffer."""

    def __init__(
        self,
        channels: int = 4,
        width: int = 32,
        size: int = 8,
        finish: bool = True,
        activation_checkpointing: bool = False,
    ):
        super().__init__()
        self.activation_checkpointing = activation_checkpointing
        self.embed = PositionalEmbedding(width, size)
        self.inp = torch.nn.Conv2d(channels, width, 3, padding=1)
        self.norm = torch.nn.GroupNorm(4, width)
        self.mid = torch.nn.Conv2d(width, width, 3, padding=1)
        self.out = torch.nn.Conv2d(width, channels, 3, padding=1)
        self.register_buffer("gain", torch.full((1,), 0.9))
        if finish:
            self.finish_init()

    @torch.no_grad()
    def finish_init(self) -> None:
        """Post-construction init (as DiT zeroes its last layer); under zero.Init it must run
        inside gathered_parameters(..., modifier_rank=0)."""
        self.out.weight.mul_(0.5)
        self.out.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x) + self.embed.pos  # (B, D, H, W)
        if self.activation_checkpointing:  # recomputed in backward: ZeRO-3 gathers again
            h = checkpoint(self._middle, h, use_reentrant=False)
        else:
            h = self._middle(h)
        return self.gain * self.out(F.silu(h))

    def _middle(self, h: torch.Tensor) -> torch.Tensor:
        return self.mid(F.silu(self.norm(h)))


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Clean images and noise of the whole global batch, drawn from the global torch RNG."""
    return torch.randn(GLOBAL_BATCH, *SHAPE), torch.randn(GLOBAL_BATCH, *SHAPE)


def eval_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch for evaluating the EMA weights, independent of the training RNG."""
    gen = torch.Generator().manual_seed(123)
    shape = (GLOBAL_BATCH, *SHAPE)
    return torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)


def denoising_loss(net, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    dtype = next(p for p in net.parameters()).dtype
    pred = net((x + SIGMA * noise).to(dtype)).float()
    return ((pred - x) ** 2).mean()


def reference_run(steps: int) -> dict:
    """The same training in one process with torch.optim.AdamW: losses, weights, EMA."""
    torch.manual_seed(0)
    net = TinyNet()
    opt = torch.optim.AdamW(net.parameters(), LR, BETAS, EPS, WEIGHT_DECAY)
    ema = {n: p.detach().clone() for n, p in net.named_parameters()}
    torch.manual_seed(1)
    losses, norms = [], []
    for step in range(steps):
        x, noise = global_batch()
        loss = denoising_loss(net, x, noise)
        opt.zero_grad()
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(net.parameters(), GRAD_CLIP).item())
        set_lr(opt, lr_at(step, steps, OPTIM))
        opt.step()
        beta = EMA.beta(step * GLOBAL_BATCH, GLOBAL_BATCH)
        for n, p in net.named_parameters():  # EDM: p_ema = p.lerp(p_ema, beta)
            ema[n] = p.detach().lerp(ema[n], beta)
        losses.append(loss.item())
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.load_state_dict({**state, **ema})
        ema_loss = denoising_loss(net, *eval_batch()).item()
    pos_sum = state["embed.pos"].double().sum().item()
    return {
        "losses": losses,
        "state": state,
        "ema": ema,
        "ema_loss": ema_loss,
        "pos_sum": pos_sum,
        "grad_norms": norms,
    }


def _evaluate(engine, ema, rank: int, world: int) -> dict:
    """Read a parameter outside forward, and the loss of the EMA weights swapped in."""
    from hpcdiff.distributed.engine import gathered_parameters

    pos = engine.module.embed.pos
    with gathered_parameters([pos]):  # whole even when ZeRO-3 partitioned it
        pos_sum = pos.detach().double().sum().item()
    x, noise = eval_batch()
    mine = slice(rank * (GLOBAL_BATCH // world), (rank + 1) * (GLOBAL_BATCH // world))
    with torch.no_grad(), ema.swapped_in():
        loss = denoising_loss(engine, x[mine], noise[mine]).detach()
    torch.distributed.all_reduce(loss)
    return {"pos_sum": pos_sum, "ema_loss": loss.item() / world}


def _build(ctx, stage: int, args):
    """The engine for ``stage`` (optionally built partitioned), with its EMA."""
    from hpcdiff.distributed.config import ZeroConfig
    from hpcdiff.distributed.ema import ShardedEMA
    from hpcdiff.distributed.engine import build_engine, gathered_parameters, model_init_context

    micro = GLOBAL_BATCH // (ctx.env.world_size * args.grad_accum)
    zero = ZeroConfig(
        stage=stage,
        precision=args.precision if stage in args.precision_stages else "fp32",
        grad_accum_steps=args.grad_accum,
        init_on_construct=args.init_on_construct and stage == 3,
        offload_optimizer="cpu" if args.offload else "none",
        extra=json.loads(args.zero_extra),
    )
    torch.manual_seed(0)
    with model_init_context(zero, OPTIM, micro, ctx):
        net = TinyNet(
            finish=not zero.init_on_construct,
            activation_checkpointing=args.activation_checkpointing,
        )
    if zero.init_on_construct:
        with gathered_parameters(net.out.parameters(), modifier_rank=0):
            net.finish_init()
    engine = build_engine(net, zero, OPTIM, micro, ctx)
    return engine, ShardedEMA(engine.module, EMA), zero.precision


def _step(engine, ema, step: int, args, rank: int, world: int) -> float:
    """One optimizer step over the global batch: ``grad_accum`` micro-batches per rank."""
    x, noise = global_batch()
    micro = GLOBAL_BATCH // (world * args.grad_accum)
    total = torch.zeros(())
    for k in range(args.grad_accum):  # this rank's micro-batches of the global batch
        mine = slice((rank * args.grad_accum + k) * micro, (rank * args.grad_accum + k + 1) * micro)
        loss = denoising_loss(engine, x[mine], noise[mine])
        engine.backward(loss)
        set_lr(engine.optimizer, lr_at(step, args.steps, OPTIM))
        engine.step()  # DeepSpeed updates the weights at the last micro-batch only
        total += loss.detach()
    ema.update(step * GLOBAL_BATCH, GLOBAL_BATCH)
    torch.distributed.all_reduce(total)
    return total.item() / (world * args.grad_accum)


def dump_state(engine, ema, path: Path, rank: int) -> None:
    """Whole float32 weights, Adam moments and EMA as the live engine holds them, read
    through DeepSpeed's own accessors (independent of hpcdiff's checkpoint code)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    from hpcdiff.distributed.shards import base_optimizer

    base, out = base_optimizer(engine), {}
    for i, (name, p) in enumerate(engine.module.named_parameters()):
        fp32 = safe_get_full_fp32_param(p)
        if fp32 is None:  # ZeRO-0 fp32: the optimizer updates the module parameter itself
            fp32, state = p.detach(), base.state[p]
            moments = [state[k] for k in ("exp_avg", "exp_avg_sq")]
        else:
            moments = [safe_get_full_optimizer_state(p, k) for k in ("exp_avg", "exp_avg_sq")]
        out[name] = [t.detach().float().cpu().clone() for t in (fp32, *moments, ema._whole(i))]
    if rank == 0:
        torch.save(out, path)


def _die_in_next_save() -> None:
    """Fault injection: this rank's next checkpoint file stops half-way, killed by SIGKILL."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save


def _train(ctx, stage: int, args) -> dict:
    from hpcdiff.distributed.checkpoint import (
        capture_rng_state,
        restore_rng_state,
        resume,
        save_checkpoint,
    )
    from hpcdiff.distributed.memory import ZeroMemoryProbe

    rank, world = ctx.env.rank, ctx.env.world_size
    engine, ema, precision = _build(ctx, stage, args)
    probe = ZeroMemoryProbe(engine)
    torch.manual_seed(1)
    start, losses = 0, {}
    ckpt_dir = Path(args.ckpt_dir) / (args.ckpt_name or f"stage{stage}") if args.ckpt_dir else None
    if ckpt_dir is not None and args.resume:
        restored = resume(engine, ckpt_dir, args.resume_from or "latest", ema)
        if restored is not None:
            start, extra = restored
            restore_rng_state(extra["rng"])  # the same on every rank: batches are global
    if args.dump_state and start == args.dump_step:  # right after loading
        dump_state(engine, ema, Path(args.dump_state), rank)
    for step in range(start, args.steps):
        if rank == args.die_rank and step == args.die_step:
            os.kill(os.getpid(), signal.SIGKILL)
        losses[step] = _step(engine, ema, step, args, rank, world)
        done = step + 1
        if rank == args.die_rank and done == args.die_in_save:
            _die_in_next_save()
        if ckpt_dir is not None and (done % args.ckpt_every == 0 or done == args.steps):
            extra = {"rng": capture_rng_state()}
            save_checkpoint(engine, ckpt_dir, done, ema, extra, keep_last=args.keep_last)
        if args.dump_state and done == args.dump_step:  # what the checkpoint of done holds
            dump_state(engine, ema, Path(args.dump_state), rank)
    memory = probe.measure()
    return {
        **_evaluate(engine, ema, rank, world),
        "losses": losses,
        "start": start,
        "precision": precision,
        "memory": {k: getattr(memory, k) for k in ("params", "grads", "optimizer")},
        "ema_numel": sum(s.numel() for s in ema.shadow),  # this rank's share of the EMA
        "num_params": sum(
            p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in engine.module.parameters()
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--stages", default="0")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--precision-stages", default="")
    parser.add_argument("--init-on-construct", action="store_true")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--zero-extra", default="{}", help="JSON merged into zero.extra")
    parser.add_argument("--ckpt-dir")
    parser.add_argument("--ckpt-every", type=int, default=2)
    parser.add_argument("--keep-last", type=int, default=5)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--resume-from", help="checkpoint path (default: the newest)")
    parser.add_argument("--ckpt-name", help="checkpoint directory name (default stage<N>)")
    parser.add_argument("--dump-state", help="rank 0 saves the whole state at --dump-step")
    parser.add_argument("--dump-step", type=int, default=-1, help="after this step or resume")
    parser.add_argument("--offload", action="store_true", help="ZeRO optimizer CPU offload")
    parser.add_argument("--die-rank", type=int, default=-1)
    parser.add_argument("--die-step", type=int, default=-1)
    parser.add_argument("--die-in-save", type=int, default=-1, help="SIGKILL mid-save of step")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    args.precision_stages = {int(s) for s in args.precision_stages.split(",") if s}

    from hpcdiff.distributed.config import DistConfig
    from hpcdiff.distributed.runtime import init_distributed, shutdown

    ctx = init_distributed(DistConfig(timeout_s=args.timeout))
    print(f"rank {ctx.env.rank}: {ctx.env}", flush=True)
    runs = {stage: _train(ctx, stage, args) for stage in map(int, args.stages.split(","))}
    if ctx.env.rank == 0:
        keys = ("rank", "world_size", "launcher", "master_addr", "master_port")
        env = {k: getattr(ctx.env, k) for k in keys}
        out = Path(args.out)
        out.with_suffix(".tmp").write_text(json.dumps({"env": env, "runs": runs}))
        os.replace(out.with_suffix(".tmp"), out)
    shutdown()
    return 0


if __name__ == "__main__":
    # Re-import under the module's own name, so TinyNet is saved as `distworker:TinyNet`
    # (loadable by the tests) rather than `__main__:TinyNet`.
    import distworker

    sys.exit(distworker.main())
