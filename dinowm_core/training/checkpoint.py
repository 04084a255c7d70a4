"""World-model checkpoints: a self-describing directory, written atomically.

Layout::

    <dir>/config.json         the resolved Config (enough to rebuild every module)
    <dir>/model.safetensors   all weights except the encoder's
    <dir>/encoder.safetensors only when the encoder cannot be found again (random init or fine-tuned)
    <dir>/normalization.json  dataset statistics (action / proprio mean and std), if known
    <dir>/train_state.pt      optimizer / scheduler / RNG / step state (``torch.load(weights_only=True)``)
    <dir>/meta.json           format version, encoder fingerprint, library versions

A pretrained frozen encoder is not stored (the reference pickled it into every checkpoint); loading finds its
weights again the same way training did and checks their fingerprint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dinowm_core.config import Config, ConfigError
from dinowm_core.models.build import build_encoder_from_config, build_world_model
from dinowm_core.models.encoders import encoder_fingerprint
from dinowm_core.models.world_model import WorldModel

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ENCODER_PREFIX = "encoder."


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, truncated or does not match the model it describes."""


def _encoder_is_stored(cfg: Config) -> bool:
    return cfg.encoder.train or not cfg.encoder.pretrained


def _split_state(wm: WorldModel) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    model, encoder = {}, {}
    for k, v in wm.state_dict().items():
        (encoder if k.startswith(ENCODER_PREFIX) else model)[k] = v.detach().cpu().contiguous().clone()
    return model, encoder


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_world_model(
    wm: WorldModel,
    path: str | os.PathLike,
    *,
    train_state: dict[str, Any] | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """Write ``wm`` to directory ``path`` atomically (temp dir in the same parent, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        model_state, encoder_state = _split_state(wm)
        save_file(model_state, tmp / "model.safetensors", metadata={"format": "dinowm", "version": "1"})
        _fsync(tmp / "model.safetensors")
        if _encoder_is_stored(wm.cfg):
            save_file(
                encoder_state, tmp / "encoder.safetensors", metadata={"format": "dinowm", "version": "1"}
            )
            _fsync(tmp / "encoder.safetensors")
        (tmp / "config.json").write_text(wm.cfg.to_json())
        if wm.normalization is not None:
            _write_json(tmp / "normalization.json", wm.normalization)
        if train_state is not None:
            torch.save(train_state, tmp / "train_state.pt")
            _fsync(tmp / "train_state.pt")
        meta = {
            "format_version": FORMAT_VERSION,
            "encoder_fingerprint": encoder_fingerprint(wm.encoder),
            "encoder_stored": _encoder_is_stored(wm.cfg),
            "torch_version": torch.__version__,
            **(extra_meta or {}),
        }
        _write_json(tmp / "meta.json", meta)
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved world model to %s", path)
    return path


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise CheckpointError(f"{file}: missing")
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: unreadable or truncated ({e})") from None


def _check_and_load(module: torch.nn.Module, state: dict[str, torch.Tensor], file: Path, prefix: str) -> None:
    want_encoder = prefix == ENCODER_PREFIX
    expected = {k: v for k, v in module.state_dict().items() if k.startswith(ENCODER_PREFIX) == want_encoder}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{file}: missing key {missing[0]!r}{more}")
    if unexpected:
        raise CheckpointError(
            f"{file}: unexpected key {unexpected[0]!r} (does the config match the weights?)"
        )
    for k, v in sorted(state.items()):
        if v.shape != expected[k].shape:
            raise CheckpointError(
                f"{file}: key {k!r} has shape {tuple(v.shape)}, the model expects {tuple(expected[k].shape)}"
            )
    module.load_state_dict(state, strict=False)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    file = Path(path) / "meta.json"
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None


def load_config_from_checkpoint(path: str | os.PathLike) -> Config:
    file = Path(path) / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (is {path} a dinowm checkpoint directory?)")
    try:
        return Config.from_json(_drop_legacy_keys(file.read_text(), file))
    except ConfigError as e:
        raise CheckpointError(f"{file}: {e}") from None


# Top-level sections that checkpoints written before the job settings left the model config still carry: where
# the run ran (Ray) and was tracked (MLflow). They never affect the model, so loading drops them.
LEGACY_SECTIONS = ("ray", "mlflow")


def _drop_legacy_keys(text: str, file: Path) -> str:
    """Drop what older checkpoints recorded and today's config no longer has, so they still load:

    * the ``ray`` and ``mlflow`` sections (job settings, now ``ray_jobs.job_config``);
    * ``planner.mpc.max_iter: null`` (the key was never read). Any other ``max_iter`` value stays and fails as
      an unknown key.

    Only a checkpoint's config goes through here: a user's ``ray.x=...`` to a model-config API stays an
    unknown key.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return text  # let the config validation report what is wrong
    if not isinstance(data, dict):
        return text
    dropped = [key for key in LEGACY_SECTIONS if key in data]
    for key in dropped:
        del data[key]
    if dropped:
        log.debug("%s: dropped the legacy job sections %s (not part of the model config)", file, dropped)
    changed = bool(dropped)
    planner = data.get("planner")
    mpc = planner.get("mpc") if isinstance(planner, dict) else None
    if isinstance(mpc, dict) and "max_iter" in mpc and mpc["max_iter"] is None:
        del mpc["max_iter"]
        log.info(
            "%s: dropped the legacy planner.mpc.max_iter=null (removed; eval.budget bounds episodes)", file
        )
        changed = True
    return json.dumps(data) if changed else text


def load_world_model(
    path: str | os.PathLike,
    *,
    encoder_weights: str | None = None,
    map_location: str | torch.device = "cpu",
    check_encoder: bool = True,
) -> WorldModel:
    """Rebuild a world model from a checkpoint directory alone.

    ``encoder_weights`` points a pretrained encoder at a different weights file than the one recorded.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    cfg = load_config_from_checkpoint(path)
    if encoder_weights is not None:
        cfg = cfg.model_copy(update={"encoder": cfg.encoder.model_copy(update={"weights": encoder_weights})})
    meta = read_meta(path)
    stored = _encoder_is_stored(cfg)
    encoder = build_encoder_from_config(cfg, load_weights=not stored)
    wm = build_world_model(cfg, encoder=encoder)
    model_file = path / "model.safetensors"
    _check_and_load(wm, _read_safetensors(model_file), model_file, prefix="")
    if stored:
        enc_file = path / "encoder.safetensors"
        _check_and_load(wm, _read_safetensors(enc_file), enc_file, prefix=ENCODER_PREFIX)
    elif check_encoder and meta.get("encoder_fingerprint"):
        found = encoder_fingerprint(wm.encoder)
        if found != meta["encoder_fingerprint"]:
            raise CheckpointError(
                f"{path / 'meta.json'}: encoder weights differ from the ones this model was trained with "
                f"(fingerprint {found} != {meta['encoder_fingerprint']}); pass the right encoder_weights "
                "or check_encoder=False"
            )
    norm_file = path / "normalization.json"
    if norm_file.is_file():
        try:
            wm.normalization = json.loads(norm_file.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{norm_file}: not valid JSON ({e})") from None
    return wm.to(map_location)


def load_train_state(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any] | None:
    file = Path(path) / "train_state.pt"
    if not file.is_file():
        return None
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"{file}: unreadable ({type(e).__name__}: {e})") from None
