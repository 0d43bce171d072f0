"""``Module``: an ``nn.Module`` that remembers how it was built, so it can be saved and re-created.

A checkpoint is a zip archive (extension ``.mdlus``, the same layout PhysicsNeMo uses) holding
``args.json`` (class + constructor arguments, nested Modules inline), ``metadata.json`` and
``model.pt`` (the state dict, read back with ``torch.load(weights_only=True)``). No code is
pickled; classes are looked up in a registry of ``Module`` subclasses.
"""

from __future__ import annotations

import importlib
import inspect
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

_FORMAT_VERSION = "1"
_MODULE_KEY = "__hpcdiff_module__"
_TENSOR_KEY = "__hpcdiff_tensor__"
_REGISTRY: dict[str, type[Module]] = {}


def _qualified(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _bind_init_args(cls: type, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Constructor arguments of ``cls(*args, **kwargs)`` by name, defaults applied."""
    sig = inspect.signature(cls.__init__)  # type: ignore[misc]  # the class's own __init__
    bound = sig.bind_partial(None, *args, **kwargs)
    bound.apply_defaults()
    out: dict[str, Any] = {}
    for name, value in list(bound.arguments.items())[1:]:
        kind = sig.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise TypeError(f"{cls.__name__}: *args constructors cannot be serialized")
        else:
            out[name] = value
    return out


class Module(torch.nn.Module):
    """Base class for hpcdiff models: records constructor arguments to save and re-create them.

    Constructor arguments must be JSON-serializable, small tensors (stored as lists with their
    dtype), or themselves ``Module`` instances (nested to any depth). Subclasses are registered
    automatically under ``"<module>:<qualname>"`` and under their class name.

    >>> class Affine(Module):
    ...     def __init__(self, n: int, scale: float = 2.0):
    ...         super().__init__()
    ...         self.lin = torch.nn.Linear(n, n)
    ...         self.scale = scale
    ...     def forward(self, x):
    ...         return self.scale * self.lin(x)
    >>> Affine(3).init_args
    {'n': 3, 'scale': 2.0}
    """

    _file_extension = ".mdlus"

    def __new__(cls, *args: Any, **kwargs: Any):
        out = super().__new__(cls)
        out._init_args = _bind_init_args(cls, args, kwargs)
        return out

    def __init__(self) -> None:
        super().__init__()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[_qualified(cls)] = cls
        _REGISTRY.setdefault(cls.__name__, cls)

    @property
    def init_args(self) -> dict[str, Any]:
        """The constructor arguments this instance was built with (defaults included)."""
        return dict(self._init_args)

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ----------------------------------------------------------------------------------------
    # Serialization
    # ----------------------------------------------------------------------------------------
    def to_spec(self) -> dict[str, Any]:
        """Class and constructor arguments (``args.json``): :meth:`from_spec` rebuilds the model."""
        args = {}
        for name, value in self._init_args.items():
            if isinstance(value, Module):
                args[name] = {_MODULE_KEY: value.to_spec()}
            elif isinstance(value, torch.Tensor):  # small tensors (e.g. per-channel constants)
                args[name] = {
                    _TENSOR_KEY: value.detach().cpu().tolist(),
                    "dtype": str(value.dtype).removeprefix("torch."),
                }
            elif isinstance(value, torch.nn.Module):
                raise TypeError(
                    f"{type(self).__name__}: constructor argument '{name}' is a plain "
                    f"torch.nn.Module ({type(value).__name__}); wrap its class with "
                    "Module.from_torch(...) so it can be saved"
                )
            else:
                try:
                    json.dumps(value)
                except (TypeError, ValueError) as err:
                    raise TypeError(
                        f"{type(self).__name__}: constructor argument '{name}' of type "
                        f"{type(value).__name__} is not JSON-serializable: {err}"
                    ) from None
                args[name] = value
        return {"class": _qualified(type(self)), "args": args}

    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
        """Write ``args.json``, ``metadata.json`` and ``model.pt`` to ``path`` atomically;
        ``metadata`` (JSON-serializable, e.g. where the weights came from) is stored in
        ``metadata.json`` under ``"user"`` (read it with :func:`read_metadata`)."""
        path = Path(path)
        if path.suffix != self._file_extension:
            raise ValueError(f"checkpoint file name must end with '{self._file_extension}': {path}")
        spec = self.to_spec()
        meta = {
            "format": "hpcdiff.core.Module",
            "format_version": _FORMAT_VERSION,
            "torch": torch.__version__,
        }
        if metadata:
            meta["user"] = metadata
        weights = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in self.state_dict().items()}, weights)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            # mkstemp creates 0600; give the file what open() would (0666 less the umask) so
            # collaborators sharing a project directory can read it like the run's other files.
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as zf:
                zf.writestr("args.json", json.dumps(spec, indent=1))
                zf.writestr("metadata.json", json.dumps(meta))
                zf.writestr("model.pt", weights.getvalue())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        override_args: dict[str, Any] | None = None,
        strict: bool = True,
        map_location: str | torch.device = "cpu",
    ) -> Module:
        """Re-create a model from a file written by :meth:`save`.

        ``override_args`` replaces constructor arguments before construction (dotted names
        reach nested Modules, e.g. ``{"inner.width": 8}``).
        """
        spec, state = _read_checkpoint(path, map_location)
        model = _build(spec, dict(override_args or {}), prefix="", path=path)
        if not isinstance(model, cls):
            raise TypeError(
                f"{path}: checkpoint holds a {type(model).__name__}, not a {cls.__name__}"
            )
        _load_state(model, state, strict, path)
        return model

    @staticmethod
    def from_spec(spec: dict[str, Any], source: str | os.PathLike = "spec") -> Module:
        """A new model (initial weights) of the class and arguments in ``spec`` (a
        :meth:`to_spec` result); errors name ``source``."""
        return _build(spec, {}, prefix="", path=source)

    def load(self, path: str | os.PathLike, strict: bool = True) -> None:
        """Load only the weights of a checkpoint into this (already built) model."""
        _, state = _read_checkpoint(path, self.device)
        _load_state(self, state, strict, path)

    # ----------------------------------------------------------------------------------------
    # Wrapping plain torch modules
    # ----------------------------------------------------------------------------------------
    @staticmethod
    def from_torch(torch_class: type[torch.nn.Module], name: str | None = None) -> type[Module]:
        """Turn a ``torch.nn.Module`` subclass into a ``Module`` subclass with serialization.

        Instances hold the wrapped model as ``inner_model`` and forward every call to it; the
        new class takes the same constructor arguments and is registered under ``name``
        (default: the torch class name) so ``from_checkpoint`` finds it.
        """
        if not (isinstance(torch_class, type) and issubclass(torch_class, torch.nn.Module)):
            raise TypeError(f"from_torch expects a torch.nn.Module subclass, got {torch_class!r}")
        name = name or torch_class.__name__

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            Module.__init__(self)
            self.inner_model = torch_class(*args, **kwargs)

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return self.inner_model(*args, **kwargs)

        init_sig = inspect.signature(torch_class.__init__)
        __init__.__signature__ = init_sig  # type: ignore[attr-defined]  # arguments bind by name
        new_cls = type(
            name,
            (Module,),
            {
                "__init__": __init__,
                "forward": forward,
                "__doc__": torch_class.__doc__,
                "__module__": torch_class.__module__,
            },
        )
        new_cls.__qualname__ = name
        _REGISTRY[_qualified(new_cls)] = new_cls
        _REGISTRY[name] = new_cls
        return new_cls


def _umask() -> int:
    """The process umask (read by setting it, as the OS offers no getter; set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _read_checkpoint(path: str | os.PathLike, map_location) -> tuple[dict, dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a Module checkpoint (expected a zip archive)")
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        missing = {"args.json", "model.pt"} - names
        if missing:
            raise ValueError(f"{path}: checkpoint lacks {sorted(missing)}")
        spec = json.loads(zf.read("args.json"))
        blob = zf.read("model.pt")
    state = torch.load(io.BytesIO(blob), map_location=map_location, weights_only=True)
    return spec, state


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``metadata`` given to :meth:`Module.save` for file ``path`` (``{}`` when none, or
    when the file is missing or not a Module checkpoint)."""
    try:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("metadata.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return {}
    user = meta.get("user") if isinstance(meta, dict) else None
    return user if isinstance(user, dict) else {}


# Modules whose Module classes moved: files written before the move name the old module.
_MOVED_MODULES = {"hpcdiff.train.build": "hpcdiff.experiment.build"}  # the experiment layer


def _resolve_class(key: str, path) -> type[Module]:
    module_name, _, qualname = key.partition(":")
    if module_name in _MOVED_MODULES:
        module_name = _MOVED_MODULES[module_name]
        key = f"{module_name}:{qualname}"
    if key in _REGISTRY:
        return _REGISTRY[key]
    if module_name and qualname and module_name != "__main__":
        try:
            obj: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            obj = None
        if isinstance(obj, type) and issubclass(obj, Module):
            return obj
    raise KeyError(
        f"{path}: class '{key}' is not a known hpcdiff Module; import the module that "
        "defines it (or register it with Module.from_torch) before loading"
    )


def _build(spec: dict, overrides: dict[str, Any], prefix: str, path) -> Module:
    if "class" not in spec or "args" not in spec:
        raise ValueError(f"{path}: args.json is not an hpcdiff Module spec")
    cls = _resolve_class(spec["class"], path)
    args: dict[str, Any] = {}
    for name, value in spec["args"].items():
        if isinstance(value, dict) and _MODULE_KEY in value:
            value = _build(value[_MODULE_KEY], overrides, f"{prefix}{name}.", path)
        elif isinstance(value, dict) and _TENSOR_KEY in value:
            dtype = getattr(torch, str(value.get("dtype")), None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(
                    f"{path}: argument '{name}' has unknown dtype {value.get('dtype')!r}"
                )
            value = torch.tensor(value[_TENSOR_KEY], dtype=dtype)
        args[name] = value
    for key in [k for k in overrides if k.startswith(prefix) and "." not in k[len(prefix) :]]:
        args[key[len(prefix) :]] = overrides.pop(key)
    sig = inspect.signature(cls.__init__)
    params = list(sig.parameters.values())[1:]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        known = {p.name for p in params}
        unknown = sorted(set(args) - known)
        if unknown:
            raise TypeError(
                f"{path}: {cls.__name__} has no constructor argument(s) {unknown}; "
                f"accepted: {sorted(known)}"
            )
    required = {
        p.name
        for p in params
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }
    missing = sorted(required - set(args))
    if missing:
        raise TypeError(f"{path}: {cls.__name__} is missing constructor argument(s) {missing}")
    if prefix == "" and overrides:
        raise TypeError(f"{path}: override_args name unknown arguments {sorted(overrides)}")
    return cls(**args)


def _load_state(model: torch.nn.Module, state: dict, strict: bool, path) -> None:
    result = model.load_state_dict(state, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise RuntimeError(
            f"{path}: state dict does not match {type(model).__name__}: "
            f"missing {result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}"
        )
