"""The original DINO-WM's ``hydra.yaml`` -> our config overrides (reference sections 2 and 4.1).

Every original key that decides the model becomes one dotted override of ours, recorded as a
``(original key, original value, our override)`` row, so ``import.json`` shows exactly how the config was read.
Keys that mean nothing to an imported model (data paths, launcher, wandb, planning launches, ...) are listed as
ignored. Settings we cannot represent are refused with a message naming the original key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

#: ``env.name`` of the original -> our env preset (deformables: ``env.kwargs.object_name`` picks the object).
ENV_NAMES = {"pusht": "pusht", "point_maze": "point_maze", "wall": "wall"}
DEFORMABLE_OBJECTS = ("rope", "granular")
FEATURE_KEYS = {"x_norm_patchtokens": "patch", "x_norm_clstoken": "cls"}
CONCAT_DIMS = {0: "token", 1: "channel"}
ORIGINAL_TARGETS = {
    "predictor": "models.vit.ViTPredictor",
    "decoder": "models.vqvae.VQVAE",
    "proprio_encoder": "models.proprio.ProprioceptiveEmbedding",
    "action_encoder": "models.proprio.ProprioceptiveEmbedding",
}

# (original dotted key, our dotted key, default when the original file lacks it (None: leave ours))
_DIRECT = (
    ("img_size", "img_size", None),
    ("frameskip", "frameskip", None),
    ("num_hist", "num_hist", None),
    ("num_pred", "num_pred", None),
    ("action_emb_dim", "action_emb_dim", None),
    ("proprio_emb_dim", "proprio_emb_dim", None),
    ("num_action_repeat", "num_action_repeat", None),
    ("num_proprio_repeat", "num_proprio_repeat", None),
    ("normalize_action", "data.normalize_action", None),
    ("has_decoder", "training.has_decoder", None),
    ("model.train_predictor", "training.train_predictor", None),
    ("model.train_decoder", "training.train_decoder", None),
    ("training.seed", "training.seed", None),
    ("training.epochs", "training.epochs", None),
    ("training.batch_size", "training.batch_size", None),
    ("training.num_reconstruct_samples", "training.num_reconstruct_samples", None),
    ("training.encoder_lr", "training.encoder_lr", None),
    ("training.decoder_lr", "training.decoder_lr", None),
    ("training.predictor_lr", "training.predictor_lr", None),
    ("training.action_encoder_lr", "training.action_encoder_lr", None),
    ("predictor.depth", "predictor.depth", None),
    ("predictor.heads", "predictor.heads", None),
    # ViTPredictor's class default; the released configs do not set it (reference section 2.2).
    ("predictor.dim_head", "predictor.dim_head", 64),
    ("predictor.mlp_dim", "predictor.mlp_dim", None),
    ("predictor.dropout", "predictor.dropout", None),
    ("predictor.emb_dropout", "predictor.emb_dropout", None),
    ("decoder.channel", "decoder.channel", None),
    ("decoder.n_res_block", "decoder.n_res_block", None),
    ("decoder.n_res_channel", "decoder.n_res_channel", None),
    ("decoder.quantize", "decoder.quantize", None),
    ("decoder.n_embed", "decoder.n_embed", None),
    ("decoder.decay", "decoder.decay", None),
)
#: Original keys without a row of their own: checked above, duplicates of a mapped key (``model.num_hist`` is
#: ``${num_hist}``), or unused by the original itself (``predictor.pool``).
_CHECKED = {"env.name", "env.kwargs", "encoder", "concat_dim", "has_predictor", "model.train_encoder",
            "predictor._target_", "decoder._target_", "action_encoder", "proprio_encoder", "predictor.pool",
            "model._target_", "model.image_size", "model.num_hist", "model.num_pred"}  # fmt: skip


class OriginalConfigError(ValueError):
    """The original run's config is missing, unreadable, or describes a model we cannot import."""


_REF = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")


def _get(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def _resolve(tree: dict[str, Any], value: Any, seen: tuple[str, ...] = ()) -> Any:
    """Resolve a whole-value ``${a.b}`` interpolation (what OmegaConf leaves when a config is saved unresolved)."""
    if isinstance(value, str) and (m := _REF.match(value)) and m.group(1) not in seen:
        try:
            return _resolve(tree, _get(tree, m.group(1)), (*seen, m.group(1)))
        except KeyError:
            return value
    return value


def read_hydra_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise OriginalConfigError(f"{path}: missing (the original run directory holds hydra.yaml)")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise OriginalConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(tree, dict):
        raise OriginalConfigError(f"{path}: expected a mapping at the top level")
    return tree


def _leaf_keys(tree: Any, prefix: str = "") -> list[str]:
    if not isinstance(tree, dict) or not tree:
        return [prefix.rstrip(".")]
    return [k for key, value in tree.items() for k in _leaf_keys(value, f"{prefix}{key}.")]


def _value(v: Any) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def map_original_config(tree: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """hydra.yaml as a mapping -> (our overrides, mapping rows, ignored original keys).

    Raises :class:`OriginalConfigError` naming the original key for a model we cannot represent.
    """

    def get(key: str, default: Any = KeyError) -> Any:
        try:
            return _resolve(tree, _get(tree, key))
        except KeyError:
            if default is KeyError:
                raise OriginalConfigError(f"hydra.yaml: missing key {key!r}") from None
            return default

    rows: list[dict[str, Any]] = []

    def emit(original: str, value: Any, ours: str | None, note: str = "") -> None:
        rows.append({"original": original, "value": value, "ours": ours, **({"note": note} if note else {})})

    # env: the original's gym id, plus the object for the deformable env
    env = get("env.name")
    if env == "deformable_env":
        obj = get("env.kwargs.object_name", None)
        if obj not in DEFORMABLE_OBJECTS:
            raise OriginalConfigError(
                f"hydra.yaml: env.kwargs.object_name={obj!r} is not one of {DEFORMABLE_OBJECTS}"
            )
        emit("env.kwargs.object_name", obj, f"env={obj}")
    elif env in ENV_NAMES:
        emit("env.name", env, f"env={ENV_NAMES[env]}")
    else:
        raise OriginalConfigError(f"hydra.yaml: env.name={env!r} has no counterpart (choices: {sorted(ENV_NAMES)}, "
                                  "deformable_env)")  # fmt: skip

    # encoder: only DINOv2 (the checkpoint never holds a frozen encoder; ours is located the normal way)
    name, target = get("encoder.name", None), str(get("encoder._target_", ""))
    if not (isinstance(name, str) and name.startswith("dinov2_")):
        raise OriginalConfigError(f"hydra.yaml: encoder {target or name!r} is not a DINOv2 encoder; only "
                                  "DINOv2 world models can be imported")  # fmt: skip
    emit("encoder.name", name, "encoder=dino")
    emit("encoder.name", name, f"encoder.name={name}")
    feature_key = get("encoder.feature_key", "x_norm_patchtokens")
    if feature_key not in FEATURE_KEYS:
        raise OriginalConfigError(
            f"hydra.yaml: encoder.feature_key={feature_key!r} (choices: {sorted(FEATURE_KEYS)})"
        )
    emit("encoder.feature_key", feature_key, f"encoder.feature={FEATURE_KEYS[feature_key]}")
    if get("model.train_encoder", False):
        raise OriginalConfigError("hydra.yaml: model.train_encoder=true: importing a fine-tuned encoder is not "
                                  "supported (the frozen-encoder checkpoints are)")  # fmt: skip
    emit("model.train_encoder", False, "encoder.train=false")

    concat_dim = get("concat_dim", 1)
    if concat_dim not in CONCAT_DIMS:
        raise OriginalConfigError(f"hydra.yaml: concat_dim={concat_dim!r} must be 0 or 1")
    emit("concat_dim", concat_dim, f"concat={CONCAT_DIMS[concat_dim]}")
    if not get("has_predictor", True):
        raise OriginalConfigError(
            "hydra.yaml: has_predictor=false: a world model without a predictor cannot plan"
        )

    for group, target_class in ORIGINAL_TARGETS.items():
        target = get(f"{group}._target_", None)
        if target is not None and target != target_class:
            raise OriginalConfigError(
                f"hydra.yaml: {group}._target_={target!r}: only {target_class} is supported"
            )
    emit("predictor._target_", ORIGINAL_TARGETS["predictor"], "predictor=vit")
    emit("predictor", None, "predictor.residual=false", "the original predicts the next latent directly")
    if get("has_decoder", True):
        emit("decoder._target_", ORIGINAL_TARGETS["decoder"], "decoder=vqvae")
    for group in ("action_encoder", "proprio_encoder"):
        tubelet = get(f"{group}.tubelet_size", 1)
        if tubelet != 1:
            raise OriginalConfigError(
                f"hydra.yaml: {group}.tubelet_size={tubelet}: only 1 (a per-step linear map)"
            )

    for original, ours, default in _DIRECT:
        value = get(original, default)
        if value is None:
            continue
        emit(original, value, f"{ours}={_value(value)}")

    used = {r["original"] for r in rows} | _CHECKED
    ignored = [k for k in _leaf_keys(tree) if not any(k == u or k.startswith(f"{u}.") for u in used)]
    return [r["ours"] for r in rows if r["ours"]], rows, ignored
