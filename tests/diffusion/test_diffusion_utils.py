"""hpcdiff.diffusion.utils: per-sample seeded noise, the resumable infinite sampler, wrappers."""

import collections
import itertools
import warnings

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from hpcdiff.core import Module
from hpcdiff.diffusion import DiffusionModel
from hpcdiff.diffusion.utils import ConcatConditionWrapper, InfiniteSampler, StackedRandomGenerator


# ---------------------------------------------------------------- StackedRandomGenerator
def _row(seed, shape, **kw):
    """Definition of row i: torch.randn(shape) from a generator seeded with seed mod 2^32."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed % 2**32), **kw)


def test_rows_are_the_per_seed_streams():
    seeds = [0, 5, 2**32 + 5, 123456789]
    out = StackedRandomGenerator("cpu", seeds).randn((4, 2, 3, 5))
    for i, s in enumerate(seeds):
        assert torch.equal(out[i], _row(s, (2, 3, 5)))
    assert torch.equal(out[1], out[2])  # seeds are taken modulo 2^32


@pytest.mark.parametrize("draw", ["randn", "randn_like", "randint"])
def test_noise_does_not_depend_on_batch_composition(draw):
    def draws(seeds):
        rnd = StackedRandomGenerator("cpu", seeds)
        shape = (len(seeds), 3, 4)
        if draw == "randn":
            return [rnd.randn(shape), rnd.randn(shape)]  # two consecutive draws
        if draw == "randn_like":
            return [rnd.randn_like(torch.empty(shape, dtype=torch.float64))]
        return [rnd.randint(-5, 5, size=shape), rnd.randint(7, size=shape)]

    batch = draws([11, 42, 7])
    for j, alone in enumerate(zip(*(draws([s]) for s in (11, 42, 7)))):
        for i, a in enumerate(alone):
            assert torch.equal(batch[j][i], a[0])
    shuffled = draws([7, 11, 42])
    for b, s in zip(batch, shuffled):
        assert torch.equal(b[[2, 0, 1]], s)


def test_draws_are_reproducible_and_follow_kwargs():
    a = StackedRandomGenerator("cpu", [1, 2]).randn((2, 8), dtype=torch.float64)
    rnd = StackedRandomGenerator("cpu", [1, 2])
    b = rnd.randn((2, 8), dtype=torch.float64)
    assert torch.equal(a, b) and a.dtype == torch.float64
    assert not torch.equal(rnd.randn((2, 8), dtype=torch.float64), b)  # the stream advances
    g = StackedRandomGenerator("cpu", [3]).randn((1, 4), requires_grad=True)
    assert g.requires_grad and g.is_leaf
    assert StackedRandomGenerator("cpu", [3]).randint(4, size=(1, 100)).unique().tolist() == [
        0,
        1,
        2,
        3,
    ]


def test_randt_is_normal_over_sqrt_chi2():
    seeds = [4, 9]
    torch.manual_seed(123)
    out = StackedRandomGenerator("cpu", seeds).randt(5, (2, 3, 3))
    torch.manual_seed(123)
    kappa = torch.distributions.Chi2(5).sample((2,)) / 5  # global generator, as documented
    eps = torch.stack([_row(s, (3, 3)) for s in seeds])
    torch.testing.assert_close(out, eps / kappa.sqrt().view(2, 1, 1))


def test_generator_errors():
    rnd = StackedRandomGenerator("cpu", [1, 2, 3])
    for call in (
        lambda: rnd.randn((2, 4)),
        lambda: rnd.randint(3, size=(4, 1)),
        lambda: rnd.randt(4, (1, 2)),
    ):
        with pytest.raises(ValueError, match="number of seeds"):
            call()
    with pytest.raises(ValueError, match="nu"):
        rnd.randt(2, (3, 2))


# ---------------------------------------------------------------- InfiniteSampler
def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


@pytest.mark.parametrize("num_replicas", [2, 4])
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_index_once_per_epoch_across_replicas(num_replicas, shuffle):
    # Without the sliding window (window_size=0) each epoch of global positions is one
    # permutation of the dataset, split round-robin over the ranks.
    n, epochs = 10, 3
    per_rank = n * epochs // num_replicas + 1
    streams = [
        _take(
            InfiniteSampler(range(n), r, num_replicas, shuffle=shuffle, seed=3, window_size=0.0),
            per_rank,
        )
        for r in range(num_replicas)
    ]
    merged = [streams[i % num_replicas][i // num_replicas] for i in range(n * epochs)]
    expected = np.random.RandomState(3).permutation(n).tolist() if shuffle else list(range(n))
    for e in range(epochs):
        assert merged[e * n : (e + 1) * n] == expected


@pytest.mark.parametrize("num_replicas", [1, 2, 4])
def test_ranks_split_one_global_stream_with_window_shuffle(num_replicas):
    # With the sliding window the global stream is no longer a permutation per epoch, but every
    # rank takes its own residue class of it and all items are visited at the same rate.
    n = 37
    single = _take(InfiniteSampler(range(n), seed=1, window_size=0.5), 120 * n)
    for r in range(num_replicas):
        mine = _take(InfiniteSampler(range(n), r, num_replicas, seed=1, window_size=0.5), 40)
        assert mine == single[r::num_replicas][:40]
    counts = collections.Counter(single)
    assert set(counts) == set(range(n))
    assert max(counts.values()) - min(counts.values()) < 0.3 * 120


def test_shuffle_depends_on_seed_only():
    n = 50
    a = _take(InfiniteSampler(range(n), seed=7), 3 * n)
    assert a == _take(InfiniteSampler(range(n), seed=7), 3 * n)
    assert a != _take(InfiniteSampler(range(n), seed=8), 3 * n)
    assert a != _take(InfiniteSampler(range(n), seed=7, window_size=0.2), 3 * n)
    assert _take(InfiniteSampler(range(n), shuffle=False, seed=7), 60) == [i % n for i in range(60)]


@pytest.mark.parametrize("num_replicas,rank", [(1, 0), (2, 1), (4, 2)])
@pytest.mark.parametrize("window_size", [0.5, 1.0])
def test_resume_from_the_middle_reproduces_the_remainder(num_replicas, rank, window_size):
    kw = dict(rank=rank, num_replicas=num_replicas, seed=5, window_size=window_size)
    n, k, m = 23, 57, 80
    full = _take(InfiniteSampler(range(n), **kw), k + m)

    sampler = InfiniteSampler(range(n), **kw)
    it = iter(sampler)
    assert [next(it) for _ in range(k)] == full[:k]
    resumed = InfiniteSampler(range(n), **kw)
    resumed.load_state_dict(sampler.state_dict())  # count tracked by the iterator
    assert _take(resumed, m) == full[k:]

    fresh = InfiniteSampler(range(n), **kw)  # never iterated: count given by the trainer
    fresh.load_state_dict(InfiniteSampler(range(n), **kw).state_dict(num_consumed=k))
    assert _take(fresh, m) == full[k:]

    # Resume twice: state of the resumed run keeps counting from the original start.
    it = iter(fresh)
    [next(it) for _ in range(10)]
    again = InfiniteSampler(range(n), **kw)
    again.load_state_dict(fresh.state_dict())
    assert _take(again, m - 10) == full[k + 10 :]


def test_resume_with_a_dataloader_and_start_idx():
    data = list(range(13))
    kw = dict(num_replicas=2, rank=0, seed=2, start_idx=5)
    full = _take(InfiniteSampler(data, **kw), 40)
    sampler = InfiniteSampler(data, **kw)
    loader = iter(torch.utils.data.DataLoader(data, batch_size=4, sampler=sampler))
    first = [next(loader).tolist() for _ in range(3)]
    assert sum(first, []) == full[:12]
    resumed = InfiniteSampler(data, **kw)
    resumed.load_state_dict(sampler.state_dict())
    assert _take(resumed, 28) == full[12:]


def test_start_idx_without_shuffle_is_the_tail_of_the_stream():
    full = _take(InfiniteSampler(range(9), 1, 3, shuffle=False), 30)
    assert _take(InfiniteSampler(range(9), 1, 3, shuffle=False, start_idx=12), 26) == full[4:]


def test_sampler_errors():
    for kw in (
        dict(dataset=[]),
        dict(dataset=range(3), num_replicas=0),
        dict(dataset=range(3), rank=2, num_replicas=2),
        dict(dataset=range(3), rank=-1),
        dict(dataset=range(3), window_size=1.5),
    ):
        with pytest.raises(ValueError):
            InfiniteSampler(**kw)
    sampler = InfiniteSampler(range(5), seed=1)
    state = sampler.state_dict(num_consumed=3)
    with pytest.raises(ValueError, match="seed"):
        InfiniteSampler(range(5), seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="dataset_len"):
        InfiniteSampler(range(6), seed=1).load_state_dict(state)
    with pytest.raises(KeyError, match="num_consumed"):
        sampler.load_state_dict({k: v for k, v in state.items() if k != "num_consumed"})
    with pytest.raises(ValueError, match="num_consumed"):
        sampler.state_dict(num_consumed=-1)


# ---------------------------------------------------------------- ConcatConditionWrapper
class DiTLike(Module):
    """Generic backbone signature: model(x, t, condition=vec, **kwargs)."""

    def __init__(self, out_channels: int = 2):
        super().__init__()
        self.out_channels = out_channels
        self.scale = torch.nn.Parameter(torch.tensor(1.5))

    def forward(self, x, t, condition=None, shift=0.0):
        self.seen = (x, t, condition)
        vec = 0 if condition is None else condition.sum(1).view(-1, 1, 1, 1)
        return self.scale * x[:, : self.out_channels] * t.view(-1, 1, 1, 1) + vec + shift


class UNetLike(Module):
    """SongUNet-style backbone: model(x, noise_labels, class_labels, augment_labels=None)."""

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        self.seen = (x, noise_labels, class_labels, augment_labels)
        return x[:, :2]


def _inputs():
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 2, 4, 5, generator=g), torch.rand(3, generator=g)
    img, vec = torch.randn(3, 1, 4, 5, generator=g), torch.randn(3, 6, generator=g)
    return x, t, img, vec


def test_image_condition_is_concatenated_and_vector_routed():
    x, t, img, vec = _inputs()
    backbone = DiTLike()
    net = ConcatConditionWrapper(backbone)
    assert isinstance(net, DiffusionModel)
    cond = TensorDict({"cond_concat": img, "cond_vec": vec}, batch_size=[3])
    out = net(x, t, cond, shift=1.0)
    seen_x, seen_t, seen_vec = backbone.seen
    assert torch.equal(seen_x, torch.cat([x, img], 1)) and seen_x.shape == (3, 3, 4, 5)
    assert seen_t is t and seen_vec is vec
    expected = 1.5 * x * t.view(-1, 1, 1, 1) + vec.sum(1).view(-1, 1, 1, 1) + 1.0
    torch.testing.assert_close(out, expected)
    net(x, t, img)  # a plain tensor is the image condition
    assert torch.equal(backbone.seen[0], torch.cat([x, img], 1)) and backbone.seen[2] is None
    net(x, t, TensorDict({"cond_vec": vec}, batch_size=[3]))
    assert torch.equal(backbone.seen[0], x) and backbone.seen[2] is vec
    net(x, t)
    assert torch.equal(backbone.seen[0], x) and backbone.seen[2] is None


def test_unet_style_backbones_get_noise_and_class_labels():
    x, t, img, vec = _inputs()
    backbone = UNetLike()
    net = ConcatConditionWrapper(backbone, image_cond_key="img", vector_cond_key="vec")
    aug = torch.zeros(3, 9)
    net(x, t, TensorDict({"img": img, "vec": vec}, batch_size=[3]), augment_labels=aug)
    seen_x, noise_labels, class_labels, augment_labels = backbone.seen
    assert torch.equal(seen_x, torch.cat([x, img], 1))
    assert noise_labels is t and class_labels is vec and augment_labels is aug
    with pytest.warns(UserWarning, match="custom keys"):
        net(x, t, img)


def test_wrapper_round_trips_through_a_checkpoint(tmp_path):
    x, t, img, vec = _inputs()
    net = ConcatConditionWrapper(DiTLike(out_channels=1), vector_cond_key="v")
    with torch.no_grad():
        net.model.scale.fill_(-0.25)
    path = net.save(tmp_path / "wrapper.mdlus")
    loaded = Module.from_checkpoint(path)
    cond = TensorDict({"cond_concat": img, "v": vec}, batch_size=[3])
    assert isinstance(loaded, ConcatConditionWrapper) and loaded.vector_cond_key == "v"
    torch.testing.assert_close(loaded(x, t, cond), net(x, t, cond))


def test_wrapper_validation():
    x, t, img, vec = _inputs()
    net = ConcatConditionWrapper(DiTLike())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for cond, err in [
            ([img], TypeError),
            (TensorDict({"other": vec}, batch_size=[3]), ValueError),
            (img[:2], ValueError),
            (img[..., :3], ValueError),
            (img[:, 0], ValueError),
            (TensorDict({"cond_vec": vec[:2]}, batch_size=[2]), ValueError),
            (TensorDict({"cond_vec": vec[:, :, None]}, batch_size=[3]), ValueError),
        ]:
            with pytest.raises(err):
                net(x, t, cond)
    with pytest.raises(ValueError, match="t must have shape"):
        net(x, t[:2], img)
