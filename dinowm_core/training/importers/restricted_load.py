"""Read the original DINO-WM's ``model_latest.pth`` without running any code from it.

The original saves ``torch.save({"predictor": <module>, "decoder": <module>, ...})``: pickles of whole module and
optimizer objects (reference section 4.3, item 4). A plain ``torch.load(weights_only=False)`` would import the
original's ``models.*`` package and run whatever callables the pickle names, so a downloaded checkpoint could
run arbitrary code (``os.system`` through ``__reduce__``).

:func:`load_original_checkpoint` instead:

1. tries ``torch.load(weights_only=True)`` (torch's own safe loader): enough when the file holds only tensors
   and state dicts;
2. otherwise loads through ``torch.load(pickle_module=<this restricted module>, weights_only=False)``. Torch
   still reads the zip archive and its tensor storages; every global the pickle names goes through
   :meth:`RestrictedUnpickler.find_class`, which

   * maps the allowed classes (the original's modules, torch.nn layers, optimizers) to :class:`Recorded`
     stand-ins that only record what the pickle hands them (constructor arguments, ``__setstate__`` state,
     items), so no method of the real class ever runs and its module is never imported;
   * returns real objects for a handful of data constructors (tensor and parameter rebuilding,
     ``OrderedDict``, ``set``, ``dict``, ``defaultdict``, dtypes);
   * refuses everything else with :class:`UnsafeCheckpointError` naming ``module.name``.

Whatever ``find_class`` returns is what a pickle can call, so nothing outside that short list of data
constructors can execute.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

#: The original's classes a checkpoint holds (reference sections 0, 2.2-2.5), plus the alternatives it names.
ORIGINAL_CLASSES = frozenset({
    "models.vit.ViTPredictor", "models.vit.Transformer", "models.vit.Attention", "models.vit.FeedForward",
    "models.vqvae.VQVAE", "models.vqvae.Decoder", "models.vqvae.ResBlock", "models.vqvae.Quantize",
    "models.proprio.ProprioceptiveEmbedding",
})  # fmt: skip

#: torch.nn containers and layers the original's modules are built from.
TORCH_NN_CLASSES = frozenset({
    "torch.nn.modules.container.Sequential", "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.ModuleDict", "torch.nn.modules.container.ParameterList",
    "torch.nn.modules.linear.Linear", "torch.nn.modules.linear.Identity",
    "torch.nn.modules.normalization.LayerNorm", "torch.nn.modules.activation.GELU",
    "torch.nn.modules.activation.ReLU", "torch.nn.modules.activation.Softmax",
    "torch.nn.modules.dropout.Dropout", "torch.nn.modules.conv.Conv1d", "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.conv.ConvTranspose2d", "torch.nn.modules.upsampling.Upsample",
})  # fmt: skip

#: Namespaces whose classes are recorded, never built: the optimizers and Accelerate's optimizer wrapper (and its
#: state objects) that the original pickles next to the modules. Their layout varies between versions and the
#: import discards them, so they are accepted by namespace; as stand-ins they cannot run code either.
INERT_NAMESPACES = ("torch.optim.", "accelerate.")


def _dtype_names() -> frozenset[str]:
    return frozenset(n for n in dir(torch) if isinstance(getattr(torch, n, None), torch.dtype))


#: Real callables a pickle may use: they only build data.
DATA_CONSTRUCTORS: dict[str, Any] = {
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "collections.OrderedDict": collections.OrderedDict,
    "collections.defaultdict": collections.defaultdict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.dict": dict,
    "builtins.list": list,
    "builtins.tuple": tuple,
    **{f"torch.{n}": getattr(torch, n) for n in _dtype_names()},
}


class UnsafeCheckpointError(ValueError):
    """The checkpoint names a global outside the allow-list, or is not a checkpoint at all."""


class Recorded:
    """A stand-in for one object of an allowed class: records what the pickle gives it, runs nothing else.

    ``qualname`` (class attribute): the original ``module.Class``. ``args``: the arguments of a ``REDUCE`` /
    ``NEWOBJ``. ``state``: what ``BUILD`` passed (a module's ``__dict__``: ``_parameters``, ``_buffers``,
    ``_modules``, plain attributes). ``items`` / ``values``: ``SETITEMS`` / ``APPENDS`` of dict / list subclasses.
    """

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Recorded:
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items, obj.values = args, kwargs, {}, {}, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict | None):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict state, slot state)
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.values.append(value)

    def extend(self, values: Any) -> None:
        self.values.extend(values)

    def __repr__(self) -> str:
        return f"<recorded {self.qualname}>"


_STAND_INS: dict[str, type[Recorded]] = {}


def stand_in(qualname: str) -> type[Recorded]:
    """The (cached) :class:`Recorded` subclass standing in for ``qualname``."""
    if qualname not in _STAND_INS:
        _STAND_INS[qualname] = type(qualname.rsplit(".", 1)[-1], (Recorded,), {"qualname": qualname})
    return _STAND_INS[qualname]


def is_recorded_class(qualname: str) -> bool:
    return (
        qualname in ORIGINAL_CLASSES
        or qualname in TORCH_NN_CLASSES
        or qualname == "torch.device"
        or qualname.startswith(INERT_NAMESPACES)
    )


class RestrictedUnpickler(pickle.Unpickler):
    """``find_class`` maps the allow-list to stand-ins / data constructors and refuses everything else."""

    source = "checkpoint"

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 2 (torch's default) writes Python 2 names (__builtin__, commands.Popen): read them as Python 3's.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualname = f"{module}.{name}"
        if qualname in DATA_CONSTRUCTORS:
            return DATA_CONSTRUCTORS[qualname]
        if is_recorded_class(qualname):
            return stand_in(qualname)
        raise UnsafeCheckpointError(
            f"{self.source}: refused to load {qualname}: it is not one of the original DINO-WM classes, torch "
            f"layers or data types this importer accepts, and loading it could run code from the file"
        )


def _restricted_module(source: str) -> Any:
    """A stand-in for the ``pickle`` module that ``torch.load(pickle_module=...)`` accepts."""
    unpickler = type("Unpickler", (RestrictedUnpickler,), {"source": source})

    def load(file: io.BufferedIOBase, **kwargs: Any) -> Any:
        return unpickler(file, **kwargs).load()

    return type("restricted_pickle", (), {"__name__": "restricted_pickle", "Unpickler": unpickler,
                                          "load": staticmethod(load)})  # fmt: skip


def load_original_checkpoint(path: str | Path) -> tuple[Any, str]:
    """-> (the unpickled checkpoint, which loader read it: ``"weights_only"`` or ``"restricted"``).

    Module and optimizer objects come back as :class:`Recorded` stand-ins; tensors are real CPU tensors (the
    original saved them on ``cuda:0``). Raises :class:`UnsafeCheckpointError` for a refused global or an
    unreadable file.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True), "weights_only"
    except pickle.UnpicklingError:
        pass  # globals beyond torch's safe set (pickled modules): the restricted loader decides
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UnsafeCheckpointError(
            f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})"
        ) from None
    try:
        data = torch.load(
            path, map_location="cpu", pickle_module=_restricted_module(str(path)), weights_only=False
        )
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise UnsafeCheckpointError(
            f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})"
        ) from None
    return data, "restricted"


# ---- reading recorded modules ---------------------------------------------------------------------------------


def qualname_of(obj: Any) -> str:
    return obj.qualname if isinstance(obj, Recorded) else type(obj).__name__


def module_attributes(obj: Recorded) -> dict[str, Any]:
    """A recorded module's plain attributes (``__dict__`` without torch's bookkeeping)."""
    state = obj.state if isinstance(obj.state, Mapping) else {}
    return {k: v for k, v in state.items() if not k.startswith("_") and k != "training"}


def module_children(obj: Recorded) -> dict[str, Any]:
    state = obj.state if isinstance(obj.state, Mapping) else {}
    return dict(state.get("_modules") or {})


def module_state_dict(obj: Recorded, prefix: str = "") -> dict[str, torch.Tensor]:
    """The ``state_dict`` a recorded module would have had: parameters and persistent buffers, recursively."""
    state = obj.state if isinstance(obj.state, Mapping) else {}
    out: dict[str, torch.Tensor] = {}
    for name, p in (state.get("_parameters") or {}).items():
        if p is not None:
            out[prefix + name] = p.detach()
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for name, b in (state.get("_buffers") or {}).items():
        if b is not None and name not in skip:
            out[prefix + name] = b.detach()
    for name, child in module_children(obj).items():
        if isinstance(child, Recorded):
            out.update(module_state_dict(child, f"{prefix}{name}."))
    return out


def module_classes(obj: Recorded, prefix: str = "") -> dict[str, str]:
    """``{dotted submodule path: original class}`` of a recorded module tree (the root is ``""``)."""
    out = {prefix.rstrip("."): obj.qualname}
    for name, child in module_children(obj).items():
        if isinstance(child, Recorded):
            out.update(module_classes(child, f"{prefix}{name}."))
    return out
