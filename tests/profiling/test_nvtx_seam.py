"""hpcdiff.nvtx: ranges nest and balance, decorators work, off means no events."""

import threading

import pytest

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
