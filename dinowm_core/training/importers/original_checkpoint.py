"""Import a run of the original DINO-WM (``hydra.yaml`` + ``checkpoints/model_latest.pth``) as our checkpoint.

::

    import_original_checkpoint("outputs/pusht", "checkpoints/pusht_imported")

1. ``hydra.yaml`` -> our config (``original_config``), then the caller's overrides (``encoder.weights=...``);
2. ``model_latest.pth`` read without running code from it (``restricted_load``);
3. our world model built from that config (the frozen DINOv2 located the normal way), the predictor, decoder,
   proprio and action encoders converted into it (``original_state``), every key and shape checked;
4. normalization statistics: PushT's hard-coded constants (reference section 3.2), a dataset of ours
   (``dataset=``), or the identity when the run had ``normalize_action: false``;
5. written with our checkpoint writer, plus ``import.json`` (the original config, the key mapping, what was
   dropped), renamed into place only when complete.

The optimizers are not carried over (``import.json`` lists them; the epoch is recorded there).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dinowm_core.config import Config
from dinowm_core.training.importers.original_config import (
    OriginalConfigError,
    map_original_config,
    read_hydra_yaml,
)
from dinowm_core.training.importers.original_state import COMPONENTS, convert_all
from dinowm_core.training.importers.restricted_load import (
    UnsafeCheckpointError,
    load_original_checkpoint,
    qualname_of,
)

log = logging.getLogger(__name__)

CHECKPOINT_FILE = Path("checkpoints") / "model_latest.pth"
IMPORT_FORMAT = 1

# Reference section 3.2: PushT's dataset normalizes with hard-coded constants. The action statistics are of
# pixel actions / 100, i.e. env units, which is what our PushT stores and planners use (action_scale 1).
PUSHT_NORMALIZATION = {
    "action_mean": [-0.0087, 0.0068],
    "action_std": [0.2019, 0.2002],
    "proprio_mean": [236.6155, 264.5674, -2.93032027, 2.54307914],
    "proprio_std": [101.1202, 87.0112, 74.84556075, 74.14009094],
    "action_scale": 1.0,
}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def original_run_files(run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """-> (hydra.yaml, model_latest.pth) of an original run directory; FileNotFoundError naming what is missing."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: not a directory (expected an original DINO-WM run directory)")
    hydra, ckpt = run / "hydra.yaml", run / CHECKPOINT_FILE
    for file in (hydra, ckpt):
        if not file.is_file():
            raise FileNotFoundError(
                f"{file}: missing (an original run directory holds hydra.yaml and {CHECKPOINT_FILE})"
            )
    return hydra, ckpt


def imported_config(
    tree: dict[str, Any], overrides: Sequence[str]
) -> tuple[Config, list[dict[str, Any]], list[str]]:
    """hydra.yaml (as a mapping) + our overrides -> (config, mapping rows, ignored original keys)."""
    from dinowm_core.presets import apply_overrides, load_config

    mapped, rows, ignored = map_original_config(tree)
    cfg = load_config(mapped)
    # Applied after the mapping, so a group choice (encoder=dino_b) replaces the mapped group as a whole.
    return (apply_overrides(cfg, list(overrides)) if overrides else cfg), rows, ignored


def _normalization(cfg: Config, dataset: str | os.PathLike | None) -> tuple[dict[str, Any] | None, str]:
    from dinowm_core.data.normalization import Normalizer

    env = cfg.env
    if not cfg.data.normalize_action:
        return Normalizer.identity(
            env.action_dim, env.proprio_dim
        ).to_dict(), "identity (normalize_action: false)"
    if dataset is not None:
        from dinowm_core.data.store import TrajectoryStore

        manifest = TrajectoryStore(dataset).manifest
        if manifest["env"]["name"] != env.name:
            raise OriginalConfigError(
                f"--dataset {dataset}: a {manifest['env']['name']!r} dataset, the run is {env.name!r}"
            )
        return Normalizer.from_manifest(manifest).to_dict(), f"dataset {dataset}"
    if env.name == "pusht":
        return dict(PUSHT_NORMALIZATION), "the original's PushT constants"
    log.warning("no normalization statistics for %s: pass the dataset (dinowm data import-dino-wm) to record them; "
                "planning falls back to identity normalization", env.name)  # fmt: skip
    return None, "none (the original computes them from the dataset: pass a dataset to record them)"


def import_original_checkpoint(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    dataset: str | os.PathLike | None = None,
) -> Path:
    """Convert an original DINO-WM run into our checkpoint directory ``out`` (which must not exist) -> ``out``.

    Raises ``FileNotFoundError`` / ``FileExistsError`` for bad paths, :class:`UnsafeCheckpointError` for a file
    naming a refused global, ``OriginalConfigError`` / ``ConfigError`` / ``StateMappingError`` for a run that
    does not fit our model; nothing is written then.
    """
    from dinowm_core.models.build import build_world_model
    from dinowm_core.training.checkpoint import save_world_model

    out = Path(out)
    hydra_file, ckpt_file = original_run_files(run_dir)
    if out.exists():
        raise FileExistsError(f"{out}: already exists (choose a new output directory)")
    tree = read_hydra_yaml(hydra_file)
    cfg, rows, ignored = imported_config(tree, overrides)
    # Before the heavy work, so a bad --dataset fails at once.
    normalization, norm_source = _normalization(cfg, dataset)
    ckpt, loader = load_original_checkpoint(ckpt_file)
    if not isinstance(ckpt, Mapping):
        raise UnsafeCheckpointError(f"{ckpt_file}: expected a dict of modules, got {qualname_of(ckpt)}")
    wm = build_world_model(cfg).eval()
    state_report = convert_all(ckpt, wm)
    wm.normalization = normalization

    record = {
        "format": "dino_wm",
        "import_format": IMPORT_FORMAT,
        "source": {
            "run_dir": str(Path(run_dir).resolve()),
            "checkpoint": str(ckpt_file.resolve()),
            "checkpoint_sha256": _sha256(ckpt_file),
            "hydra_yaml": str(hydra_file.resolve()),
        },
        "loader": loader,
        "epoch": ckpt.get("epoch"),
        "checkpoint_keys": {str(k): qualname_of(v) for k, v in ckpt.items()},
        "not_imported": sorted(str(k) for k in ckpt if k not in COMPONENTS and k != "epoch"),
        "original_config": tree,
        "config_mapping": rows,
        "ignored_original_keys": ignored,
        "overrides": list(overrides),
        "state_mapping": state_report,
        "normalization": norm_source,
    }
    meta = {
        "imported_from": {"format": "dino_wm", "checkpoint_sha256": record["source"]["checkpoint_sha256"]}
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.import-{uuid.uuid4().hex[:8]}"
    try:
        staged = save_world_model(wm, staging / out.name, extra_meta=meta)
        with open(staged / "import.json", "w") as f:
            json.dump(record, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.rename(staged, out)  # fails if out appeared meanwhile: never replaces someone else's directory
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("imported %s (epoch %s) into %s", ckpt_file, record["epoch"], out)
    return out
