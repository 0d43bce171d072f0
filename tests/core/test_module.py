"""hpcdiff.core.Module: constructor capture, save / from_checkpoint round trips, safe loading."""

import json
import zipfile

import pytest
import torch

from hpcdiff.core import Module


class Affine(Module):
    def __init__(self, n: int, scale: float = 2.0, names=None):
        super().__init__()
        self.lin = torch.nn.Linear(n, n)
        self.scale = scale
        self.names = list(names or [])

    def forward(self, x):
        return self.scale * self.lin(x)


class Outer(Module):
    def __init__(self, inner: Module, bias: float = 0.0):
        super().__init__()
        self.inner = inner
        self.bias = torch.nn.Parameter(torch.tensor(bias))

    def forward(self, x):
        return self.inner(x) + self.bias


class TorchMLP(torch.nn.Module):
    def __init__(self, width, depth=2):
        super().__init__()
        self.layers = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(depth)])

    def forward(self, x):
        return self.layers(x)


def test_init_args_capture_positional_keyword_and_defaults():
    m = Affine(4, names=["x", "y"])
    assert m.init_args == {"n": 4, "scale": 2.0, "names": ["x", "y"]}
    assert Affine(1).init_args == {"n": 1, "scale": 2.0, "names": None}


def test_round_trip_restores_class_args_and_outputs(tmp_path):
    torch.manual_seed(0)
    m = Affine(5, scale=-1.5)
    path = m.save(tmp_path / "affine.mdlus")
    loaded = Module.from_checkpoint(path)
    assert type(loaded) is Affine and loaded.init_args == m.init_args
    x = torch.randn(3, 5)
    torch.testing.assert_close(loaded(x), m(x), rtol=0, atol=0)


def test_nested_modules_round_trip_with_dotted_override(tmp_path):
    torch.manual_seed(1)
    m = Outer(Affine(3, scale=3.0), bias=0.25)
    m.save(tmp_path / "outer.mdlus")
    loaded = Outer.from_checkpoint(tmp_path / "outer.mdlus")
    x = torch.randn(2, 3)
    torch.testing.assert_close(loaded(x), m(x), rtol=0, atol=0)
    changed = Outer.from_checkpoint(tmp_path / "outer.mdlus", override_args={"inner.scale": 1.0})
    assert changed.inner.scale == 1.0
    torch.testing.assert_close(changed(x), m.inner.lin(x) + 0.25)


def test_from_torch_wraps_a_plain_module_and_round_trips(tmp_path):
    Wrapped = Module.from_torch(TorchMLP)
    torch.manual_seed(2)
    m = Wrapped(width=6, depth=3)
    assert isinstance(m, Module) and isinstance(m.inner_model, TorchMLP)
    assert m.init_args == {"width": 6, "depth": 3}
    m.save(tmp_path / "mlp.mdlus")
    loaded = Module.from_checkpoint(tmp_path / "mlp.mdlus")
    x = torch.randn(4, 6)
    torch.testing.assert_close(loaded(x), m(x), rtol=0, atol=0)


def test_tensor_arguments_round_trip_with_dtype(tmp_path):
    m = Affine(2, scale=torch.tensor([0.5, 2.0], dtype=torch.float64))
    m.save(tmp_path / "t.mdlus")
    loaded = Module.from_checkpoint(tmp_path / "t.mdlus")
    assert loaded.scale.dtype == torch.float64
    torch.testing.assert_close(loaded.scale, m.scale, rtol=0, atol=0)


def test_weights_only_load_into_existing_model(tmp_path):
    a, b = Affine(2), Affine(2)
    a.save(tmp_path / "a.mdlus")
    b.load(tmp_path / "a.mdlus")
    torch.testing.assert_close(b.lin.weight, a.lin.weight, rtol=0, atol=0)


def test_save_rejects_plain_torch_and_non_json_args(tmp_path):
    with pytest.raises(TypeError, match="inner.*from_torch"):
        Outer(TorchMLP(2)).save(tmp_path / "x.mdlus")
    with pytest.raises(TypeError, match="'scale'.*not JSON"):
        Affine(2, scale=object()).save(tmp_path / "y.mdlus")
    with pytest.raises(ValueError, match=r"\.mdlus"):
        Affine(2).save(tmp_path / "z.pt")


def _rewrite_args(path, mutate):
    with zipfile.ZipFile(path) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    spec = json.loads(files["args.json"])
    mutate(spec)
    files["args.json"] = json.dumps(spec).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in files.items():
            zf.writestr(n, data)


def test_unknown_missing_and_unregistered_args_give_clear_errors(tmp_path):
    path = Affine(2).save(tmp_path / "a.mdlus")
    _rewrite_args(path, lambda s: s["args"].update(width=3))
    with pytest.raises(TypeError, match=r"no constructor argument\(s\) \['width'\]"):
        Module.from_checkpoint(path)
    path = Affine(2).save(tmp_path / "b.mdlus")
    _rewrite_args(path, lambda s: s["args"].pop("n"))
    with pytest.raises(TypeError, match=r"missing constructor argument\(s\) \['n'\]"):
        Module.from_checkpoint(path)
    path = Affine(2).save(tmp_path / "c.mdlus")
    _rewrite_args(path, lambda s: s.update({"class": "os:system"}))
    with pytest.raises(KeyError, match="not a known hpcdiff Module"):
        Module.from_checkpoint(path)
    path = Affine(2).save(tmp_path / "d.mdlus")
    with pytest.raises(TypeError, match=r"no constructor argument\(s\) \['zz'\]"):
        Module.from_checkpoint(path, override_args={"zz": 1})
    with pytest.raises(TypeError, match=r"unknown arguments \['nope.x'\]"):
        Module.from_checkpoint(path, override_args={"nope.x": 1})


def test_wrong_class_corrupt_and_mismatched_files(tmp_path):
    path = Affine(2).save(tmp_path / "a.mdlus")
    with pytest.raises(TypeError, match="holds a Affine, not a Outer"):
        Outer.from_checkpoint(path)
    (tmp_path / "bad.mdlus").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.mdlus"):
        Module.from_checkpoint(tmp_path / "bad.mdlus")
    with pytest.raises(FileNotFoundError):
        Module.from_checkpoint(tmp_path / "missing.mdlus")
    with pytest.raises(RuntimeError):
        Affine(3).load(path)  # shape mismatch


def test_weights_are_loaded_without_unpickling_code(tmp_path):
    """A model.pt carrying an arbitrary pickled object is refused by weights_only loading."""
    path = Affine(2).save(tmp_path / "a.mdlus")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with zipfile.ZipFile(path) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    import io

    buf = io.BytesIO()
    torch.save({"lin.weight": Evil()}, buf)
    files["model.pt"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in files.items():
            zf.writestr(n, data)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        Module.from_checkpoint(path)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    m = Affine(2)
    m.save(tmp_path / "m.mdlus")
    m.save(tmp_path / "m.mdlus")  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mdlus"]
