"""A run directory in the original DINO-WM's format, built offline at small widths.

The classes below reproduce the original's modules as docs/reference.md describes them (section 2: the ViT
predictor with its pickled frame-causal mask attribute and module-global sizes, the VQ-VAE decoder with its unused
codebook, the Conv1d proprio / action embedding, and ``VWorldModel``'s encode / predict / rollout / decode math of
section 1). They carry the original's module paths (``models.vit``, ...), which exist in ``sys.modules`` only
inside :func:`original_modules`, so a checkpoint saved there pickles exactly like the original's and loading it
outside cannot fall back on them.

``write_original_run`` saves what the original trainer saves (section 4.3): ``torch.save`` of a dict of whole
modules and optimizers (tensors tagged ``cuda:0``, as on the GPU that trained them) plus ``hydra.yaml``.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml
from einops import rearrange, repeat
from torch import nn

# ---- models/vit.py ----------------------------------------------------------------------------------------------

# The original sets these module globals in ViTPredictor.__init__ before building the layers (its quirk).
NUM_FRAMES = 1
NUM_PATCHES = 1


def generate_mask_matrix(npatch: int, nwindow: int) -> torch.Tensor:
    """Block lower-triangular (1, 1, w*p, w*p): frame i sees frames 0..i."""
    zeros, ones = torch.zeros(npatch, npatch), torch.ones(npatch, npatch)
    rows = [torch.cat([ones] * (i + 1) + [zeros] * (nwindow - i - 1), dim=1) for i in range(nwindow)]
    return torch.cat(rows, dim=0)[None, None]


class FeedForward(nn.Module):
    __module__ = "models.vit"

    def __init__(self, dim, hidden_dim, dropout=0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim), nn.Dropout(dropout),
        )  # fmt: skip

    def forward(self, x):
        return self.net(x)


class Attention(nn.Module):
    __module__ = "models.vit"

    def __init__(self, dim, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner = dim_head * heads
        project_out = not (heads == 1 and dim_head == dim)
        self.heads = heads
        self.scale = dim_head**-0.5
        self.norm = nn.LayerNorm(dim)
        self.attend = nn.Softmax(dim=-1)
        self.dropout = nn.Dropout(dropout)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = (
            nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout)) if project_out else nn.Identity()
        )
        # A plain attribute, not a buffer (the original also moves it to 'cuda' here).
        self.bias = generate_mask_matrix(NUM_PATCHES, NUM_FRAMES)

    def forward(self, x):
        n = x.shape[1]
        x = self.norm(x)
        q, k, v = (
            rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in self.to_qkv(x).chunk(3, dim=-1)
        )
        dots = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        dots = dots.masked_fill(self.bias[:, :, :n, :n] == 0, float("-inf"))
        attn = self.dropout(self.attend(dots))
        return self.to_out(rearrange(torch.matmul(attn, v), "b h n d -> b n (h d)"))


class Transformer(nn.Module):
    __module__ = "models.vit"

    def __init__(self, dim, depth, heads, dim_head, mlp_dim, dropout=0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads, dim_head, dropout), FeedForward(dim, mlp_dim, dropout)])
            for _ in range(depth)
        )

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x)


class ViTPredictor(nn.Module):
    __module__ = "models.vit"

    def __init__(self, *, num_patches, num_frames, dim, depth, heads, mlp_dim, pool="cls", dim_head=64,
                 dropout=0.0, emb_dropout=0.0):  # fmt: skip
        super().__init__()
        global NUM_FRAMES, NUM_PATCHES
        NUM_FRAMES, NUM_PATCHES = num_frames, num_patches
        self.pos_embedding = nn.Parameter(torch.randn(1, num_frames * num_patches, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout)
        self.pool = pool

    def forward(self, x):
        x = x + self.pos_embedding[:, : x.shape[1]]
        return self.transformer(self.dropout(x))


# ---- models/vqvae.py --------------------------------------------------------------------------------------------


class Quantize(nn.Module):
    """The EMA codebook; present (buffers only) even when quantization is off."""

    __module__ = "models.vqvae"

    def __init__(self, dim, n_embed, decay=0.99, eps=1e-5):
        super().__init__()
        self.dim, self.n_embed, self.decay, self.eps = dim, n_embed, decay, eps
        embed = torch.randn(dim, n_embed)
        self.register_buffer("embed", embed)
        self.register_buffer("cluster_size", torch.zeros(n_embed))
        self.register_buffer("embed_avg", embed.clone())


class ResBlock(nn.Module):
    __module__ = "models.vqvae"

    def __init__(self, in_channel, channel):
        super().__init__()
        self.conv = nn.Sequential(
            nn.ReLU(), nn.Conv2d(in_channel, channel, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(channel, in_channel, 1),
        )  # fmt: skip

    def forward(self, x):
        return self.conv(x) + x


class Decoder(nn.Module):
    __module__ = "models.vqvae"

    def __init__(self, in_channel, out_channel, channel, n_res_block, n_res_channel, stride):
        super().__init__()
        assert stride == 4
        blocks = [nn.Conv2d(in_channel, channel, 3, padding=1)]
        blocks += [ResBlock(channel, n_res_channel) for _ in range(n_res_block)]
        blocks += [
            nn.ReLU(inplace=True), nn.ConvTranspose2d(channel, channel // 2, 4, stride=2, padding=1),
            nn.ReLU(inplace=True), nn.ConvTranspose2d(channel // 2, out_channel, 4, stride=2, padding=1),
        ]  # fmt: skip
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        return self.blocks(x)


class VQVAE(nn.Module):
    __module__ = "models.vqvae"

    def __init__(self, in_channel=3, channel=128, n_res_block=2, n_res_channel=32, emb_dim=64, n_embed=512,
                 decay=0.99, quantize=True):  # fmt: skip
        super().__init__()
        self.quantize = quantize
        self.quantize_b = Quantize(emb_dim, n_embed)
        self.upsample_b = Decoder(emb_dim, emb_dim, channel, n_res_block, n_res_channel, stride=4)
        self.dec = Decoder(emb_dim, in_channel, channel, n_res_block, n_res_channel, stride=4)
        self.info = f"in_channel: {in_channel}, channel: {channel}, emb_dim: {emb_dim}, n_embed: {n_embed}"

    def forward(self, x):
        """x: (b, t, p, e) -> (images (b*t, 3, H, W), diff (1, 1))"""
        side = int(x.shape[2] ** 0.5)
        x = rearrange(x, "b t (h w) e -> (b t) h w e", h=side, w=side)
        assert not self.quantize
        diff = torch.zeros(1)
        return self.dec(self.upsample_b(x.permute(0, 3, 1, 2))), diff.unsqueeze(0)


# ---- models/proprio.py ------------------------------------------------------------------------------------------


class ProprioceptiveEmbedding(nn.Module):
    __module__ = "models.proprio"

    def __init__(self, num_frames=16, tubelet_size=1, in_chans=8, emb_dim=384, use_3d_pos=False):
        super().__init__()
        self.num_frames, self.tubelet_size, self.in_chans, self.emb_dim = (
            num_frames,
            tubelet_size,
            in_chans,
            emb_dim,
        )
        self.patch_embed = nn.Conv1d(in_chans, emb_dim, kernel_size=tubelet_size, stride=tubelet_size)

    def forward(self, x):
        return self.patch_embed(x.permute(0, 2, 1)).permute(0, 2, 1)


# ---- models/visual_world_model.py (channel concat, visual features given: the encoder is not in the file) ------


class VWorldModel(nn.Module):
    __module__ = "models.visual_world_model"

    def __init__(self, *, num_hist, proprio_encoder, action_encoder, predictor, decoder):
        super().__init__()
        self.num_hist = num_hist
        self.proprio_encoder, self.action_encoder = proprio_encoder, action_encoder
        self.predictor, self.decoder = predictor, decoder
        self.proprio_dim, self.action_dim = proprio_encoder.emb_dim, action_encoder.emb_dim

    def encode(self, visual, proprio, act):
        """visual (b, t, p, dv) features, proprio (b, t, dp), act (b, t, f*d) -> z (b, t, p, dv+10+10)"""
        p = visual.shape[2]
        prop = repeat(self.proprio_encoder(proprio), "b t d -> b t p d", p=p)
        acts = repeat(self.action_encoder(act), "b t d -> b t p d", p=p)
        return torch.cat([visual, prop, acts], dim=3)

    def predict(self, z):
        t = z.shape[1]
        out = self.predictor(rearrange(z, "b t p d -> b (t p) d"))
        return rearrange(out, "b (t p) d -> b t p d", t=t)

    def separate_emb(self, z):
        visual = z[..., : -(self.proprio_dim + self.action_dim)]
        proprio = z[:, :, 0, -(self.proprio_dim + self.action_dim) : -self.action_dim]
        return {"visual": visual, "proprio": proprio}, z[:, :, 0, -self.action_dim :]

    def replace_actions_from_z(self, z, act):
        acts = repeat(self.action_encoder(act), "b t d -> b t p d", p=z.shape[2])
        return torch.cat([z[..., : -self.action_dim], acts], dim=3)

    def rollout(self, visual0, proprio0, act):
        """n context frames (features), N >= n actions -> (z_obs of N + 1 frames, z)"""
        n = visual0.shape[1]
        z = self.encode(visual0, proprio0, act[:, :n])
        for t in range(n, act.shape[1]):
            z_new = self.predict(z[:, -self.num_hist :])[:, -1:]
            z = torch.cat([z, self.replace_actions_from_z(z_new, act[:, t : t + 1])], dim=1)
        z = torch.cat([z, self.predict(z[:, -self.num_hist :])[:, -1:]], dim=1)
        return self.separate_emb(z)[0], z

    def decode_obs(self, visual):
        b, t = visual.shape[:2]
        images, diff = self.decoder(visual)
        return rearrange(images, "(b t) c h w -> b t c h w", b=b, t=t), diff


ORIGINAL_MODULES = {
    "models.vit": (FeedForward, Attention, Transformer, ViTPredictor, generate_mask_matrix),
    "models.vqvae": (Quantize, ResBlock, Decoder, VQVAE),
    "models.proprio": (ProprioceptiveEmbedding,),
    "models.visual_world_model": (VWorldModel,),
}


@contextlib.contextmanager
def original_modules() -> Iterator[None]:
    """Register the fake ``models`` package and its modules in ``sys.modules``; restore whatever was there."""
    saved = {name: sys.modules.get(name) for name in ("models", *ORIGINAL_MODULES)}
    package = types.ModuleType("models")
    package.__path__ = []
    sys.modules["models"] = package
    for name, members in ORIGINAL_MODULES.items():
        module = types.ModuleType(name)
        for member in members:
            setattr(module, member.__name__, member)
        sys.modules[name] = module
        setattr(package, name.split(".")[1], module)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


# ---- a small run ---------------------------------------------------------------------------------------------------

# Small widths around the tiny offline encoder (width 64, img 64 -> 4 x 4 = 16 patches).
SIZES = {"visual_dim": 64, "num_patches": 16, "num_hist": 3, "proprio_in": 2, "action_in": 10, "emb": 10,
         "depth": 2, "heads": 4, "dim_head": 16, "mlp_dim": 96, "channel": 32, "n_res_block": 1,
         "n_res_channel": 16, "n_embed": 24}  # fmt: skip


def hydra_config(sizes: dict = SIZES) -> dict:
    """The keys of the original's saved hydra.yaml (reference section 4.1) for a Wall run at small widths."""
    s = sizes
    return {
        "env": {"name": "wall", "args": [], "kwargs": {},
                "dataset": {"_target_": "datasets.wall_dset.load_wall_slice_train_val", "data_path": "/data/wall_single",
                            "split_ratio": 0.9, "split_mode": "random", "n_rollout": None, "normalize_action": True},
                "decoder_path": None, "num_workers": 16},
        "encoder": {"_target_": "models.dino.DinoV2Encoder", "name": "dinov2_vits14", "feature_key": "x_norm_patchtokens"},
        "action_encoder": {"_target_": "models.proprio.ProprioceptiveEmbedding", "num_frames": 1, "tubelet_size": 1,
                           "use_3d_pos": False},
        "proprio_encoder": {"_target_": "models.proprio.ProprioceptiveEmbedding", "num_frames": 1, "tubelet_size": 1,
                            "use_3d_pos": False},
        "decoder": {"_target_": "models.vqvae.VQVAE", "channel": s["channel"], "n_embed": s["n_embed"],
                    "n_res_block": s["n_res_block"], "n_res_channel": s["n_res_channel"], "quantize": False},
        "predictor": {"_target_": "models.vit.ViTPredictor", "depth": s["depth"], "heads": s["heads"],
                      "mlp_dim": s["mlp_dim"], "dropout": 0.1, "emb_dropout": 0, "pool": "mean",
                      "dim_head": s["dim_head"]},
        "model": {"_target_": "models.visual_world_model.VWorldModel", "image_size": "${img_size}",
                  "num_hist": "${num_hist}", "num_pred": "${num_pred}", "train_encoder": False,
                  "train_predictor": True, "train_decoder": True},
        "training": {"seed": 0, "epochs": 100, "batch_size": 32, "save_every_x_epoch": 1,
                     "reconstruct_every_x_batch": 500, "num_reconstruct_samples": 6, "encoder_lr": 1e-6,
                     "decoder_lr": 3e-4, "predictor_lr": 5e-4, "action_encoder_lr": 5e-4},
        "img_size": 64, "frameskip": 5, "concat_dim": 1, "normalize_action": True,
        "action_emb_dim": s["emb"], "num_action_repeat": 1, "proprio_emb_dim": s["emb"], "num_proprio_repeat": 1,
        "num_hist": s["num_hist"], "num_pred": 1, "has_predictor": True, "has_decoder": True, "debug": False,
        "plan_settings": {"plan_cfg_path": None, "planner": ["gd", "cem"], "goal_source": ["dset", "random_state"],
                          "goal_H": [5], "alpha": [0.1, 1]},
        "ckpt_base_path": "./", "wandb_run_id": "abc123", "saved_folder": "/runs/outputs/2024-10-01/12-00-00",
        "effective_batch_size": 32, "gpu_batch_size": 32,
    }  # fmt: skip


def build_original(sizes: dict = SIZES, seed: int = 0) -> VWorldModel:
    """The original's modules at ``sizes``, with a few training steps' worth of non-default weights."""
    s = sizes
    torch.manual_seed(seed)
    dim = s["visual_dim"] + 2 * s["emb"]
    predictor = ViTPredictor(num_patches=s["num_patches"], num_frames=s["num_hist"], dim=dim, depth=s["depth"],
                             heads=s["heads"], mlp_dim=s["mlp_dim"], pool="mean", dim_head=s["dim_head"],
                             dropout=0.1)  # fmt: skip
    decoder = VQVAE(channel=s["channel"], n_res_block=s["n_res_block"], n_res_channel=s["n_res_channel"],
                    emb_dim=s["visual_dim"], n_embed=s["n_embed"], quantize=False)  # fmt: skip
    proprio = ProprioceptiveEmbedding(
        num_frames=1, tubelet_size=1, in_chans=s["proprio_in"], emb_dim=s["emb"]
    )
    action = ProprioceptiveEmbedding(num_frames=1, tubelet_size=1, in_chans=s["action_in"], emb_dim=s["emb"])
    wm = VWorldModel(num_hist=s["num_hist"], proprio_encoder=proprio, action_encoder=action, predictor=predictor,
                     decoder=decoder)  # fmt: skip
    with torch.no_grad():  # LayerNorm affines and biases away from their inits, so a mix-up shows
        for p in wm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return wm.eval()


@contextlib.contextmanager
def _saved_on_cuda() -> Iterator[None]:
    """Tag every storage ``cuda:0`` while saving, as the original's GPU-trained checkpoints are."""
    import torch.serialization as ser

    real = ser.location_tag
    ser.location_tag = lambda storage: "cuda:0"
    try:
        yield
    finally:
        ser.location_tag = real


def checkpoint_dict(wm: VWorldModel) -> dict:
    """What the original trainer saves (reference section 4.3): whole modules, optimizers and the epoch."""
    predictor_opt = torch.optim.AdamW(wm.predictor.parameters(), lr=5e-4)
    decoder_opt = torch.optim.Adam(wm.decoder.parameters(), lr=3e-4)
    for opt in (predictor_opt, decoder_opt):  # optimizer state (exp_avg, step) as after training
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad()
    return {"epoch": 7, "predictor": wm.predictor, "predictor_optimizer": predictor_opt, "decoder": wm.decoder,
            "decoder_optimizer": decoder_opt, "action_encoder": wm.action_encoder,
            "proprio_encoder": wm.proprio_encoder}  # fmt: skip


def write_original_run(
    root: Path, wm: VWorldModel, config: dict | None = None, payload: dict | None = None
) -> Path:
    """``root/{hydra.yaml, checkpoints/model_latest.pth}`` as the original writes them -> ``root``."""
    (root / "checkpoints").mkdir(parents=True, exist_ok=True)
    (root / "hydra.yaml").write_text(yaml.safe_dump(config or hydra_config()))
    with original_modules(), _saved_on_cuda():
        torch.save(
            payload if payload is not None else checkpoint_dict(wm), root / "checkpoints" / "model_latest.pth"
        )
    return root
