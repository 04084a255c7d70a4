"""`dinowm quickstart`: the end-to-end tour on embedded defaults, offline, on a CPU.

Stages run in order and each prints what it did; stages whose subsystem is not installed yet are skipped
with a message. Today: build the reference architecture and the offline model, save a checkpoint, reload it
and check it is bit-identical, then roll it out from real environment frames when the envs are available.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# The offline quickstart model: DINOv2 architecture at small width with frozen random weights (no download),
# a small residual predictor and decoder, 64 px frames -> 16 patch tokens.
OFFLINE = [
    "env=wall",
    "encoder=dino_tiny",
    "predictor=vit_small",
    "decoder=vqvae_small",
    "img_size=64",
    "frameskip=5",
    "num_hist=1",
]


def _say(msg: str) -> None:
    print(msg, flush=True)


def run(output_dir: str, overrides: list[str]) -> Path:
    from dinowm_core import build_world_model, load_config, load_world_model, save_world_model
    from dinowm_core.models.summary import model_summary

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    _say("[1/3] reference DINO-WM architecture (random encoder weights: no download here)")
    ref = build_world_model(load_config(["encoder.pretrained=false"]))
    _say(model_summary(ref)["text"])
    del ref

    cfg = load_config([*OFFLINE, f"output_dir={out}", *overrides])
    _say(f"\n[2/3] offline model ({' '.join(OFFLINE[:5])} ...)")
    wm = build_world_model(cfg)
    _say(model_summary(wm)["text"])
    ckpt = save_world_model(wm, out / "checkpoint")
    wm2 = load_world_model(ckpt)
    same = all(
        torch.equal(a, b) for a, b in zip(wm.state_dict().values(), wm2.state_dict().values(), strict=True)
    )
    _say(f"      checkpoint written to {ckpt} and reloaded: {'bit-identical' if same else 'MISMATCH'}")
    if not same:
        raise SystemExit("checkpoint round trip failed")

    _say("\n[3/3] open-loop rollout from real environment frames")
    try:
        from dinowm_core.envs import make_env
    except ImportError as e:  # pragma: no cover - envs are part of the package
        _say(f"      skipped: {e}")
        return ckpt
    env = make_env(cfg.env.name, img_size=cfg.img_size)
    init, _ = env.sample_init_goal(seed=0)
    obs, _ = env.reset(options={"state": init})
    visual = torch.from_numpy(obs["visual"]).permute(2, 0, 1).float().div(127.5).sub(1)
    obs_t = {"visual": visual[None, None], "proprio": torch.from_numpy(obs["proprio"])[None, None]}
    with torch.no_grad():
        z_obs, _ = wm2.eval().rollout(obs_t, torch.zeros(1, 5, cfg.action_dim))
        frames = wm2.decode_visual(z_obs["visual"])[0]
    _say(
        f"      imagined {z_obs['visual'].shape[1]} latent frames {tuple(z_obs['visual'].shape)}, "
        f"decoded to {tuple(frames.shape)} (untrained model: train it with the training pipeline)"
    )
    _say(f"\ndone in {time.perf_counter() - t0:.1f}s; outputs in {out}")
    return ckpt
