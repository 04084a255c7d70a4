"""The original DINO-WM's module states -> ours (reference sections 2.2, 2.3, 2.5).

``model_latest.pth`` key (original class) -> our ``WorldModel`` attribute, names and shapes:

* ``predictor`` (``models.vit.ViTPredictor``) -> ``predictor`` (``ViTPredictor``): ``transformer.layers.*`` ->
  ``layers.*``, ``transformer.norm`` -> ``norm``. The fused ``to_qkv`` (q, k, v chunks; heads as ``(h d)``) and
  ``to_out.0`` keep their layout (our SDPA computes the same attention with the same 1/sqrt(dim_head) scale); an
  ``nn.Identity`` ``to_out`` (1 head as wide as dim) becomes an identity Linear.
* ``decoder`` (``models.vqvae.VQVAE``) -> ``decoder`` (``VQVAEDecoder``): ``upsample_b.blocks.*`` and
  ``dec.blocks.*`` unchanged; ``quantize_b.*`` -> ``quantizer.*``, dropped when ``quantize`` is off (the original
  keeps an unused codebook).
* ``proprio_encoder`` / ``action_encoder`` (``models.proprio.ProprioceptiveEmbedding``) -> ``Embedder``: the
  kernel-1 Conv1d ``patch_embed`` weight ``(E, in, 1)`` -> the Linear ``proj`` weight ``(E, in)``.

The predictor's attention mask is not a weight (ours is rebuilt from the config), but the original pickles it as an
attribute of every attention layer, so the import checks that it is the frame-causal mask our config builds, and
that each layer's ``heads`` and ``scale`` match ours.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from dinowm_core.training.importers.restricted_load import (
    Recorded,
    module_attributes,
    module_children,
    module_classes,
    module_state_dict,
    qualname_of,
)

COMPONENTS = {
    "predictor": "models.vit.ViTPredictor",
    "decoder": "models.vqvae.VQVAE",
    "proprio_encoder": "models.proprio.ProprioceptiveEmbedding",
    "action_encoder": "models.proprio.ProprioceptiveEmbedding",
}

State = dict[str, torch.Tensor]


class StateMappingError(ValueError):
    """The original checkpoint's weights do not fit the model our config describes."""


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def original_state(ckpt: Mapping[str, Any], key: str) -> tuple[State, Recorded | None]:
    """The state dict of ``ckpt[key]`` under the original's names (a pickled module or a plain state dict)."""
    obj = ckpt.get(key)
    if isinstance(obj, Recorded):
        if obj.qualname != COMPONENTS[key]:
            raise StateMappingError(
                f"model_latest.pth[{key!r}] is a {obj.qualname}, expected {COMPONENTS[key]}"
            )
        return module_state_dict(obj), obj
    if _is_state_dict(obj):
        return {k: v.detach() for k, v in obj.items()}, None
    raise StateMappingError(
        f"model_latest.pth[{key!r}]: expected a pickled {COMPONENTS[key]} or a state dict, got {qualname_of(obj)}"
    )


def _walk(obj: Recorded, prefix: str = "") -> list[tuple[str, Recorded]]:
    out = [(prefix.rstrip("."), obj)]
    for name, child in module_children(obj).items():
        if isinstance(child, Recorded):
            out += _walk(child, f"{prefix}{name}.")
    return out


# ---- predictor --------------------------------------------------------------------------------------------------


def _predictor_name(key: str) -> str:
    if key.startswith("transformer."):
        return key.removeprefix("transformer.")
    return key


def _check_attention(module: Recorded | None, ours: nn.Module) -> list[str]:
    """Check each pickled attention layer's heads, scale and frame-causal mask against ours -> notes."""
    if module is None:
        return ["predictor given as a state dict: heads and mask taken from the config"]
    layers = [(path, m) for path, m in _walk(module) if m.qualname == "models.vit.Attention"]
    if not layers:
        raise StateMappingError("model_latest.pth['predictor']: no models.vit.Attention layers found")
    attn = ours.layers[0][0]
    dim_head = attn.to_qkv.out_features // 3 // attn.heads
    want = ours.mask.cpu()
    for path, layer in layers:
        attrs = module_attributes(layer)
        heads = attrs.get("heads")
        if heads is not None and heads != attn.heads:
            raise StateMappingError(f"predictor.{path}.heads = {heads} in the checkpoint, {attn.heads} in the "
                                    "config (set predictor.heads)")  # fmt: skip
        scale = attrs.get("scale")
        if scale is not None and abs(float(scale) - dim_head**-0.5) > 1e-6:
            raise StateMappingError(f"predictor.{path}.scale = {scale}: expected dim_head ** -0.5 with dim_head "
                                    f"{dim_head} (set predictor.dim_head)")  # fmt: skip
        buffers = (layer.state.get("_buffers") if isinstance(layer.state, Mapping) else None) or {}
        # A plain attribute in the original; a buffer in some forks.
        mask = attrs.get("bias", buffers.get("bias"))
        if isinstance(mask, torch.Tensor):
            mask = mask.reshape(mask.shape[-2], mask.shape[-1]) != 0
            if mask.shape != want.shape or not torch.equal(mask, want):
                raise StateMappingError(
                    f"predictor.{path}.bias: the checkpoint's attention mask {tuple(mask.shape)} is not the "
                    f"frame-causal mask of {ours.num_frames} frames x {ours.num_patches} patches that the config "
                    "builds (check num_hist, img_size and concat)"
                )
    return [f"{len(layers)} attention layers: heads {attn.heads}, scale dim_head ** -0.5 and the frame-causal mask "
            "checked"]  # fmt: skip


def convert_predictor(state: State, module: Recorded | None, ours: nn.Module) -> tuple[State, list[str]]:
    out = {_predictor_name(k): v for k, v in state.items()}
    notes = _check_attention(module, ours)
    # A fork that registers the mask as a persistent buffer saves it with the weights: checked above, rebuilt by us.
    masks = [k for k in out if re.fullmatch(r"layers\.\d+\.0\.bias", k)]
    for k in masks:
        del out[k]
    if masks:
        notes.append(f"dropped {len(masks)} saved attention masks (ours is built from the config)")
    dim = ours.dim
    for i, (attn, _ff) in enumerate(ours.layers):
        key = f"layers.{i}.0.to_out.0"
        if f"{key}.weight" not in out and f"layers.{i}.0.to_qkv.weight" in out:
            # The original uses nn.Identity as the output projection when heads == 1 and dim_head == dim.
            if attn.to_out[0].in_features != dim:
                raise StateMappingError(f"predictor: layer {i} has no output projection but inner width "
                                        f"{attn.to_out[0].in_features} != dim {dim}")  # fmt: skip
            out[f"{key}.weight"], out[f"{key}.bias"] = torch.eye(dim), torch.zeros(dim)
            notes.append(f"layer {i}: identity output projection written as an identity Linear")
    return out, notes


# ---- decoder and embedders ----------------------------------------------------------------------------------------


def convert_decoder(state: State, module: Recorded | None, ours: nn.Module) -> tuple[State, list[str]]:
    quantize = getattr(ours, "quantizer", None) is not None
    if module is not None:
        recorded = module_attributes(module).get("quantize")
        if recorded is not None and bool(recorded) != quantize:
            raise StateMappingError(f"decoder.quantize = {recorded} in the checkpoint, {quantize} in the config "
                                    "(set decoder.quantize)")  # fmt: skip
    out, notes = {}, []
    for k, v in state.items():
        if k.startswith("quantize_b."):
            if quantize:
                out["quantizer." + k.removeprefix("quantize_b.")] = v
            else:
                notes.append(f"dropped {k}: quantization is off, the codebook is never used")
        else:
            out[k] = v
    return out, notes


def convert_embedder(state: State, module: Recorded | None, ours: nn.Module) -> tuple[State, list[str]]:
    out = {}
    for k, v in state.items():
        if not k.startswith("patch_embed."):
            raise StateMappingError(f"unexpected key {k!r} in a ProprioceptiveEmbedding")
        name = "proj." + k.removeprefix("patch_embed.")
        if name == "proj.weight":
            if v.ndim != 3 or v.shape[-1] != 1:
                raise StateMappingError(
                    f"{k}: expected a kernel-1 Conv1d weight (E, in, 1), got {tuple(v.shape)}"
                )
            v = v[..., 0]
        out[name] = v
    return out, ["Conv1d kernel 1 -> Linear (weight squeezed)"]


CONVERTERS = {
    "predictor": convert_predictor,
    "decoder": convert_decoder,
    "proprio_encoder": convert_embedder,
    "action_encoder": convert_embedder,
}


def load_component(target: nn.Module, state: State, name: str) -> None:
    """Load ``state`` into ``target`` exactly: every key present, none extra, every shape equal (else an error
    naming the key and both shapes)."""
    expected = target.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise StateMappingError(f"{name}: the checkpoint has no weight for {name}.{missing[0]}"
                                + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))  # fmt: skip
    if unexpected:
        raise StateMappingError(f"{name}: the checkpoint has {name}.{unexpected[0]}, which the model our config "
                                "builds does not (does the config match the run?)")  # fmt: skip
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise StateMappingError(f"{name}.{k}: shape {tuple(v.shape)} in the checkpoint, {tuple(expected[k].shape)} "
                                    "in the model our config builds (does the config match the run?)")  # fmt: skip
    target.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def convert_all(ckpt: Mapping[str, Any], wm: nn.Module) -> dict[str, Any]:
    """Convert and load every component of ``ckpt`` into ``wm`` -> a report for ``import.json``."""
    report: dict[str, Any] = {}
    for name in COMPONENTS:
        target = getattr(wm, name)
        if name == "decoder" and target is None:
            if ckpt.get("decoder") is not None:
                report[name] = {"skipped": "the config builds no decoder (training.has_decoder=false)"}
            continue
        if name not in ckpt:
            hint = " (set training.has_decoder=false to import without it)" if name == "decoder" else ""
            raise StateMappingError(
                f"model_latest.pth has no {name!r} (keys: {sorted(map(str, ckpt))}){hint}"
            )
        state, module = original_state(ckpt, name)
        converted, notes = CONVERTERS[name](state, module, target)
        load_component(target, converted, name)
        renamed = {k: _renamed(name, k) for k in state}
        report[name] = {
            "class": COMPONENTS[name] if module is not None else "state dict",
            "submodules": module_classes(module) if module is not None else {},
            "tensors": len(converted),
            "parameters": int(sum(v.numel() for v in converted.values())),
            "renamed": {k: v for k, v in renamed.items() if v is not None and v != k},
            "notes": notes,
        }
    return report


def _renamed(component: str, key: str) -> str | None:
    if component == "predictor":
        return _predictor_name(key)
    if component == "decoder":
        return "quantizer." + key.removeprefix("quantize_b.") if key.startswith("quantize_b.") else key
    return "proj." + key.removeprefix("patch_embed.")
