"""hpcdiff.nvtx: ranges nest and balance, decorators work, off means no events; block ranges
(profiling.model_ranges) and DeepSpeed's forwarded ranges."""

import threading
from types import SimpleNamespace

import pytest
import torch

from hpcdiff import nvtx


@pytest.fixture
def recorder():
    backend = nvtx.enable("record")
    yield backend
    nvtx.disable()


def test_nested_ranges_are_recorded_in_order(recorder):
    @nvtx.range("inner.fn")
    def work(x):
        return x + 1

    with nvtx.range("outer"):
        assert work(1) == 2
    assert [(e, n) for e, n, _ in recorder.events] == [
        ("push", "outer"),
        ("push", "inner.fn"),
        ("pop", "inner.fn"),
        ("pop", "outer"),
    ]


def test_exceptions_still_pop(recorder):
    with pytest.raises(ZeroDivisionError):
        with nvtx.range("boom"):
            1 / 0
    assert [e for e, _, _ in recorder.events] == ["push", "pop"]


def test_threads_keep_separate_stacks(recorder):
    def run():
        with nvtx.range("thread"):
            pass

    with nvtx.range("main"):
        t = threading.Thread(target=run)
        t.start()
        t.join()
    tids = {n: tid for e, n, tid in recorder.events if e == "push"}
    assert tids["main"] != tids["thread"]
    assert [e for e, n, _ in recorder.events if n == "thread"] == ["push", "pop"]


def test_disabled_records_nothing_and_unknown_backend_is_rejected():
    backend = nvtx.enable("record")
    nvtx.disable()
    with nvtx.range("ignored"):
        pass
    assert backend.events == [] and not nvtx.enabled()
    with pytest.raises(ValueError, match="unknown nvtx backend 'cuda'"):
        nvtx.enable("cuda")


def _pairs(events):
    """Names of (push, matching pop) in order, checking every pop closes the last push."""
    stack, names = [], []
    for event, name, _ in events:
        if event == "push":
            stack.append(name)
            names.append(name)
        else:
            assert stack.pop() == name
    assert stack == []
    return names


def _song_unet():
    from hpcdiff.models.song_unet import SongUNet

    torch.manual_seed(0)
    return SongUNet(8, 2, 2, model_channels=8, channel_mult=[1, 2], num_blocks=1,
                    attn_resolutions=[], dropout=0.0)  # fmt: skip


def test_model_ranges_wrap_every_unet_entry_in_order_and_change_nothing(recorder):
    net = _song_unet().eval()
    x, sigma = torch.randn(2, 2, 8, 8), torch.ones(2)
    with torch.no_grad():
        plain = net(x, sigma)
    assert nvtx.instrument_model(net) == len(net.enc) + len(net.dec)
    assert nvtx.instrument_model(torch.nn.Sequential(net)) == 0  # already done
    with torch.no_grad(), nvtx.range("model.forward"):
        hooked = net(x, sigma)
    torch.testing.assert_close(hooked, plain, rtol=0, atol=0)
    enc = [f"model.enc.{i}" for i in range(len(net.enc))]
    dec = [f"model.dec.{i}" for i in range(len(net.dec))]
    assert _pairs(recorder.events) == ["model.forward", *enc, *dec]
    assert all(nvtx.known(n) for n in enc + dec) and not nvtx.known("model.enc.x")


def test_model_ranges_pop_when_a_block_raises(recorder):
    net = _song_unet()
    nvtx.instrument_model(net)
    with pytest.raises(RuntimeError):
        net(torch.randn(1, 3, 8, 8), torch.ones(1))  # 3 channels into a 2-channel conv
    assert _pairs(recorder.events) == ["model.enc.0"]


def test_dit_blocks_get_model_block_ranges(recorder):
    from hpcdiff.models.dit import DiT

    net = DiT(8, 2, patch_size=4, hidden_size=16, depth=3, num_heads=2)
    assert nvtx.instrument_model(net) == 3
    net(torch.randn(1, 2, 8, 8), torch.ones(1))
    assert _pairs(recorder.events) == ["model.block.0", "model.block.1", "model.block.2"]


def _hooks(net):
    return sum(len(b._forward_pre_hooks) + len(b._forward_hooks) for b in net.modules())


@pytest.mark.parametrize("nvtx_on, model_ranges", [(False, True), (True, False)])
def test_no_hook_unless_ranges_and_model_ranges_are_on(nvtx_on, model_ranges, monkeypatch):
    import deepspeed.accelerator

    acc = deepspeed.accelerator.get_accelerator()
    monkeypatch.setattr(acc, "range_push", acc.range_push)  # restored after the test
    monkeypatch.setattr(acc, "range_pop", acc.range_pop)
    nvtx.disable()
    cfg = SimpleNamespace(nvtx=nvtx_on, model_ranges=model_ranges)
    nvtx.configure(cfg, torch.device("cpu"))
    try:
        wrapped = torch.nn.Sequential(_song_unet())
        assert _hooks(wrapped) == 0
    finally:
        nvtx.disable()


def test_backbones_attached_after_configure_are_instrumented_until_disable(monkeypatch):
    import deepspeed.accelerator

    acc = deepspeed.accelerator.get_accelerator()
    monkeypatch.setattr(acc, "range_push", acc.range_push)
    monkeypatch.setattr(acc, "range_pop", acc.range_pop)
    monkeypatch.delenv("HPCDIFF_NVTX", raising=False)
    nvtx.disable()
    nvtx.configure(SimpleNamespace(nvtx=True, model_ranges=True), torch.device("cpu"))
    try:
        net = _song_unet()
        loose = _song_unet()  # not attached to a parent: not seen
        wrapped = torch.nn.Sequential(net)
        assert _hooks(wrapped) == 2 * (len(net.enc) + len(net.dec)) and _hooks(loose) == 0
    finally:
        nvtx.disable()
    assert _hooks(torch.nn.Sequential(_song_unet())) == 0


def test_deepspeed_ranges_go_to_their_own_domain_while_ranges_are_on(recorder, monkeypatch):
    from deepspeed.accelerator import get_accelerator
    from deepspeed.utils.nvtx import instrument_w_nvtx

    from hpcdiff.distributed import forward_deepspeed_ranges

    acc = get_accelerator()
    monkeypatch.setattr(acc, "range_push", acc.range_push)
    monkeypatch.setattr(acc, "range_pop", acc.range_pop)
    assert forward_deepspeed_ranges()

    @instrument_w_nvtx
    def reduce_grads():
        with nvtx.range("inner"):
            return 3

    with nvtx.range("train.backward"):
        assert reduce_grads() == 3
    names = ["train.backward", "DeepSpeed:test_deepspeed_ranges_go_to_their_own_domain_while_"
             "ranges_are_on.<locals>.reduce_grads", "inner"]  # fmt: skip
    assert [n for e, n, _ in recorder.events if e == "push"] == names
    # Per-domain stacks: the hpcdiff pop closes "inner", DeepSpeed's pop its own range.
    assert [n for e, n, _ in recorder.events if e == "pop"] == names[::-1]
    nvtx.disable()
    reduce_grads()
    assert len(recorder.events) == 6  # nothing while off
