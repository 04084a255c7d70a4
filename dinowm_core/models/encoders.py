"""Visual encoders: frozen DINOv2 patch features (the DINO-WM default), a small trainable conv patch encoder and a
fixed pixel-patch encoder (no learned or random network: for offline work on small frames).

Reference: docs/reference.md section 2.1. The reference calls `torch.hub.load("facebookresearch/dinov2")`
inside its constructor, which downloads code and weights. Here the architecture is our own (`dinov2.py`) and the
weights are found locally (explicit path, torch hub cache, Hugging Face cache in timm or transformers layout) and
only downloaded when explicitly allowed. Inputs are images already resized to the encoder's input size and
normalized with mean 0.5 / std 0.5 to [-1, 1], as the reference feeds DINOv2 (not ImageNet statistics).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from glob import glob
from pathlib import Path
from typing import Literal, TypeVar

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from dinowm_core.models.dinov2 import ARCHS, DinoVisionTransformer, dinov2_vit, init_weights_

logger = logging.getLogger(__name__)

Feature = Literal["patch", "cls"]
M = TypeVar("M", bound=nn.Module)
ENCODER_NAMES = (*(f"dinov2_{arch}" for arch in ARCHS), "dinov2_tiny", "conv", "pixels")
OFFICIAL_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_{arch}/dinov2_{arch}_pretrain.pth"
# Hugging Face repos holding the same weights: (timm repo, transformers repo).
_HF_REPOS = {
    "vits14": ("timm/vit_small_patch14_dinov2.lvd142m", "facebook/dinov2-small"),
    "vitb14": ("timm/vit_base_patch14_dinov2.lvd142m", "facebook/dinov2-base"),
    "vitl14": ("timm/vit_large_patch14_dinov2.lvd142m", "facebook/dinov2-large"),
    "vitg14": ("timm/vit_giant_patch14_dinov2.lvd142m", "facebook/dinov2-giant"),
}
_HF_FILES = ("model.safetensors", "pytorch_model.bin")


class VisualEncoder(nn.Module):
    """Wraps a backbone with a `forward_features` dict; x: (B, 3, H, W) in [-1, 1] -> tokens (B, P, D) or (B, 1, D).

    A frozen encoder (`trainable=False`) has no trainable parameters, stays in eval mode whatever `train()` is
    called with, and runs without building an autograd graph.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        name: str,
        emb_dim: int,
        patch_size: int,
        feature: Feature = "patch",
        is_dino: bool,
        trainable: bool,
    ) -> None:
        super().__init__()
        if feature not in ("patch", "cls"):
            raise ValueError(f"feature must be 'patch' or 'cls', got {feature!r}")
        self.backbone = backbone
        self.name, self.emb_dim, self.patch_size = name, emb_dim, patch_size
        self.feature, self.is_dino, self.trainable = feature, is_dino, trainable
        if not trainable:
            self.requires_grad_(False)
        self.train()  # eval mode when frozen, see train()

    def train(self, mode: bool = True) -> VisualEncoder:
        return super().train(mode and self.trainable)

    def num_tokens(self, height: int, width: int) -> int:
        """Number of output tokens for an input of height x width pixels."""
        return 1 if self.feature == "cls" else (height // self.patch_size) * (width // self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> (B, P, D) with P = (H / patch) * (W / patch), or (B, 1, D) for the CLS feature"""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name} expects images (B, 3, H, W), got {tuple(x.shape)}")
        # no_grad rather than inference_mode: inference tensors could not be saved for backward by the trainable
        # predictor that consumes these features.
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            features = self.backbone.forward_features(x)
        if self.feature == "cls":
            return features["x_norm_clstoken"].unsqueeze(1)
        return features["x_norm_patchtokens"]


class ConvPatchEncoder(nn.Module):
    """One token per 16 x 16 pixel cell: two stride-4 convolutions with GroupNorm/GELU, then a 1x1 mix."""

    patch_size = 16

    def __init__(self, width: int) -> None:
        super().__init__()
        groups = math.gcd(width, 8)
        self.net = nn.Sequential(
            nn.Conv2d(3, width, kernel_size=4, stride=4),
            nn.GroupNorm(groups, width),
            nn.GELU(),
            nn.Conv2d(width, width, kernel_size=4, stride=4),
            nn.GroupNorm(groups, width),
            nn.GELU(),
            nn.Conv2d(width, width, kernel_size=1),
        )

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, 3, H, W) -> {x_norm_patchtokens: (B, H/16 * W/16, width)}"""
        if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of {self.patch_size}")
        return {"x_norm_patchtokens": rearrange(self.net(x), "b d h w -> b (h w) d")}


def _init_conv_(model: ConvPatchEncoder, generator: torch.Generator) -> ConvPatchEncoder:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
                module.bias.zero_()
            elif isinstance(module, nn.GroupNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
    return model


class PixelPatchEncoder(nn.Module):
    """One token per 16 x 16 pixel cell: the cell's pixels themselves, optionally low-pass filtered, optionally
    mixed by a fixed random orthogonal projection. Nothing is learned and nothing is random but the projection.

    A small object (Wall's dot: a Gaussian of std 1.7 px) moved by d pixels changes raw pixels by an amount that
    saturates after a few pixels. A Gaussian blur of std ``blur`` widens it to std ``sqrt(1.7**2 + blur**2)``, so
    the feature distance keeps growing over that range. The projection onto ``width`` < 768 (= 3 * 16 * 16)
    orthonormal directions drawn from ``init_seed`` keeps distances up to a random-projection error and shrinks
    the token; ``width`` = 768 keeps the blurred pixels as they are. Features are ``gain * (pixel - 1)``: a white background
    is 0 (images are in [-1, 1]).

    The blur kernel and the projection (times ``gain``) are buffers, so checkpoints and feature-cache fingerprints
    hold all of the encoder; :func:`build_encoder` rebuilds them identically from ``init_seed``.
    """

    patch_size = 16
    in_chans = 3

    def __init__(self, width: int, blur: float, gain: float, generator: torch.Generator) -> None:
        super().__init__()
        dim = self.in_chans * self.patch_size**2
        if not 0 < width <= dim:
            raise ValueError(f"pixels encoder: width must be in 1..{dim} (3 x 16 x 16 pixels), got {width}")
        if blur < 0:
            raise ValueError(f"pixels encoder: blur must be >= 0, got {blur}")
        self.width, self.blur, self.gain = width, float(blur), float(gain)
        radius = math.ceil(3 * blur)
        taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
        kernel = torch.exp(-(taps**2) / (2 * blur**2)) if blur > 0 else torch.ones(1, dtype=torch.float64)
        self.register_buffer("kernel", (kernel / kernel.sum()).float())
        if width == dim:
            proj = torch.eye(dim)
        else:  # orthonormal columns: QR of a Gaussian matrix drawn from the seeded generator
            q, r = torch.linalg.qr(torch.randn(dim, width, generator=generator, dtype=torch.float64))
            proj = (q * torch.sign(torch.diagonal(r))).float()  # sign fix: a unique Q for the draw
        self.register_buffer("proj", proj * self.gain)  # (dim, width)

    def _blurred(self, x: torch.Tensor) -> torch.Tensor:
        radius = (self.kernel.numel() - 1) // 2
        if radius == 0:
            return x
        c = x.shape[1]
        k = self.kernel.to(x.dtype)
        x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # separable: rows, then columns
        return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, 3, H, W) in [-1, 1] -> {x_norm_patchtokens: (B, H/16 * W/16, width)}"""
        if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of {self.patch_size}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"pixels encoder expects {self.in_chans} channels, got {x.shape[1]}")
        p = self.patch_size
        x = self._blurred(x) - 1.0
        patches = rearrange(x, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p)
        return {"x_norm_patchtokens": patches @ self.proj.to(patches.dtype)}


# ---------------------------------------------------------------------------------------------------------------
# State-dict layouts: official hub == timm names (timm lacks mask_token); transformers renamed everything.
# ---------------------------------------------------------------------------------------------------------------

_PREFIXES = ("module.", "dinov2.", "model.")
_TOP_KEYS = (
    *("cls_token", "pos_embed", "mask_token"),
    *("patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"),
)
_BLOCK_COMMON = [f"{p}.{s}" for p in ("norm1", "attn.qkv", "attn.proj", "norm2") for s in ("weight", "bias")]
_BLOCK_COMMON += ["ls1.gamma", "ls2.gamma"]
_BLOCK_FFN = {
    "mlp": [f"mlp.{p}.{s}" for p in ("fc1", "fc2") for s in ("weight", "bias")],
    "swiglu": [f"mlp.{p}.{s}" for p in ("w12", "w3") for s in ("weight", "bias")],
}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")
_TRANSFORMERS_RENAMES = [
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.mask_token", "mask_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"encoder\.layer\.(\d+)\.norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    # query/key/value are concatenated into qkv afterwards, in that order (the official reshape is (3, heads, d)).
    (
        r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)",
        r"blocks.\1.attn.\2.\3",
    ),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"encoder\.layer\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"encoder\.layer\.(\d+)\.mlp\.weights_in\.(weight|bias)", r"blocks.\1.mlp.w12.\2"),
    (r"encoder\.layer\.(\d+)\.mlp\.weights_out\.(weight|bias)", r"blocks.\1.mlp.w3.\2"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
]


def _strip_prefixes(key: str) -> str:
    while key.startswith(_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def _from_transformers(sd: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        for pattern, replacement in _TRANSFORMERS_RENAMES:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, replacement, key)] = value
                break
        else:
            raise ValueError(f"{source}: unexpected key {key!r} in a transformers-layout DINOv2 state dict")
    for key in [k for k in out if ".attn.query." in k]:
        parts = [key.replace(".query.", f".{name}.") for name in ("query", "key", "value")]
        if missing := [p for p in parts if p not in out]:
            raise ValueError(f"{source}: missing key {missing[0]!r} (needed to build attn.qkv)")
        out[key.replace(".query.", ".qkv.")] = torch.cat([out.pop(p) for p in parts], dim=0)
    return out


def _from_timm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(sd)
    # timm packs the ViT-g SwiGLU as mlp.fc1 (dim -> 2 * hidden) + mlp.fc2 (hidden -> dim), same (x1, x2) order.
    for key in [k for k in out if k.endswith("mlp.fc1.weight")]:
        fc2 = key.replace("fc1", "fc2")
        if fc2 in out and out[key].shape[0] == 2 * out[fc2].shape[1]:
            for s in ("weight", "bias"):
                out[key.replace("fc1.weight", f"w12.{s}")] = out.pop(key.replace("weight", s))
                out[fc2.replace("fc2.weight", f"w3.{s}")] = out.pop(fc2.replace("weight", s))
    if "mask_token" not in out and "cls_token" in out:
        out["mask_token"] = torch.zeros(1, out["cls_token"].shape[-1], dtype=out["cls_token"].dtype)
    return out


def _check_official_keys(sd: Mapping[str, torch.Tensor], source: str) -> None:
    blocks: dict[int, set[str]] = {}
    for key in sd:
        if match := _BLOCK_KEY.fullmatch(key):
            blocks.setdefault(int(match[1]), set()).add(match[2])
        elif key not in _TOP_KEYS:
            raise ValueError(f"{source}: unexpected key {key!r} in a DINOv2 state dict")
    if missing := [k for k in _TOP_KEYS if k not in sd]:
        raise ValueError(f"{source}: missing key {missing[0]!r} in a DINOv2 state dict")
    for index in range(max(blocks, default=-1) + 1):
        names = blocks.get(index, set())
        ffn = _BLOCK_FFN["swiglu"] if "mlp.w12.weight" in names else _BLOCK_FFN["mlp"]
        expected = _BLOCK_COMMON + ffn
        if missing := [n for n in expected if n not in names]:
            raise ValueError(f"{source}: missing key 'blocks.{index}.{missing[0]}' in a DINOv2 state dict")
        if extra := sorted(names - set(expected)):
            raise ValueError(f"{source}: unexpected key 'blocks.{index}.{extra[0]}' in a DINOv2 state dict")


def normalize_dinov2_state_dict(
    sd: Mapping[str, object], *, source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """Map a hub / timm / transformers DINOv2 state dict to the official key layout; errors name `source` and key."""
    for wrapper in ("state_dict", "model"):
        if wrapper in sd and isinstance(sd[wrapper], Mapping):
            sd = sd[wrapper]
    sd = {_strip_prefixes(k): v for k, v in sd.items()}
    if any(k.startswith(("embeddings.", "encoder.", "layernorm.")) for k in sd):
        out = _from_transformers(sd, source)
    else:
        out = _from_timm(sd)
    _check_official_keys(out, source)
    return out


def load_dinov2_state_dict(model: DinoVisionTransformer, sd: Mapping[str, object], *, source: str) -> None:
    """Normalize `sd` and load it strictly into `model`, with errors that name the file and the key."""
    sd = normalize_dinov2_state_dict(sd, source=source)
    expected = model.state_dict()
    if missing := [k for k in expected if k not in sd]:
        raise ValueError(
            f"{source}: missing key {missing[0]!r} ({len(sd)} keys given, the model has {len(expected)})"
        )
    if extra := [k for k in sd if k not in expected]:
        raise ValueError(
            f"{source}: unexpected key {extra[0]!r} (is this checkpoint for another architecture?)"
        )
    for key, value in sd.items():
        if value.shape != expected[key].shape:
            raise ValueError(
                f"{source}: key {key!r} has shape {tuple(value.shape)}, the model expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(sd, strict=True)


# ---------------------------------------------------------------------------------------------------------------
# Weight discovery
# ---------------------------------------------------------------------------------------------------------------


def _hf_hub_cache() -> Path:
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache)
    if home := os.environ.get("HF_HOME"):
        return Path(home) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def weight_search_patterns(arch: str) -> list[str]:
    """Local places searched for pretrained `arch` weights, in priority order (glob patterns)."""
    patterns = [str(Path(torch.hub.get_dir()) / "checkpoints" / f"dinov2_{arch}_pretrain.pth")]
    for repo in _HF_REPOS[arch]:
        snapshots = _hf_hub_cache() / f"models--{repo.replace('/', '--')}" / "snapshots"
        patterns += [str(snapshots / "*" / name) for name in _HF_FILES]
    return patterns


def _first_match(pattern: str) -> Path | None:
    matches = sorted(glob(pattern))
    if len(matches) > 1:  # several Hugging Face snapshots: prefer the one refs/main points to
        refs_main = Path(pattern).parents[2] / "refs" / "main"
        main = refs_main.read_text().strip() if refs_main.is_file() else None
        matches.sort(key=lambda m: Path(m).parent.name != main)
    return Path(matches[0]) if matches else None


def _read_weights(path: Path) -> Mapping[str, object]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def locate_pretrained_weights(arch: str, weights: str | os.PathLike | None, allow_download: bool) -> str:
    """Where pretrained ``arch`` weights would be read from: a local file, or the official URL when only a download
    (``allow_download``) would find them. Raises FileNotFoundError listing every place searched. Reads nothing,
    so a driver can check a config in milliseconds before any worker builds the model."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"DINOv2 weights file {str(path)!r} (encoder.weights) does not exist")
        return str(path)
    patterns = weight_search_patterns(arch)
    for pattern in patterns:
        if (path := _first_match(pattern)) is not None:
            return str(path)
    url = OFFICIAL_URL.format(arch=arch)
    if allow_download:
        return url
    searched = "\n".join(f"  - {p}" for p in patterns)
    raise FileNotFoundError(
        f"no pretrained weights for dinov2_{arch} found. Searched:\n{searched}\n"
        f"Fix: set encoder.weights=/path/to/dinov2_{arch}_pretrain.pth (or a timm/transformers model.safetensors), "
        f"place the file in one of the locations above, or set encoder.allow_download=true to fetch {url}"
    )


def _pretrained_state_dict(
    arch: str, weights: str | os.PathLike | None, allow_download: bool
) -> tuple[Mapping, str]:
    """Return (state dict, where it came from); raise FileNotFoundError listing every place searched."""
    source = locate_pretrained_weights(arch, weights, allow_download)
    if "://" in source:
        logger.info("downloading DINOv2 %s weights from %s", arch, source)
        return torch.hub.load_state_dict_from_url(source, map_location="cpu", weights_only=True), source
    return _read_weights(Path(source)), source


def _on_meta(factory: Callable[[], M]) -> M:
    """Build a module without spending (global) RNG on default inits that are overwritten anyway."""
    with torch.device("meta"):
        module = factory()
    return module.to_empty(device="cpu")


def build_encoder(
    name: str,
    weights: str | os.PathLike | None = None,
    *,
    feature: Feature = "patch",
    pretrained: bool = True,
    allow_download: bool = False,
    train: bool | None = None,
    width: int = 64,
    depth: int = 2,
    heads: int = 2,
    init_seed: int = 0,
    blur: float = 0.0,
    gain: float = 1.0,
) -> VisualEncoder:
    """Build a visual encoder by name (see ENCODER_NAMES).

    `train=None` means the default for the family: DINOv2 frozen, `conv` trainable, `pixels` always frozen. `width`,
    `depth`, `heads` size `dinov2_tiny` (and `width` the conv encoder and the pixels encoder's projection); `blur`
    and `gain` set the pixels encoder's filter and scale. Random inits (and the pixels encoder's projection) draw
    only from a generator seeded with `init_seed`.
    """
    if name not in ENCODER_NAMES:
        raise ValueError(f"unknown encoder {name!r}; expected one of {ENCODER_NAMES}")
    generator = torch.Generator().manual_seed(init_seed)
    if name == "pixels":
        if feature != "patch":
            raise ValueError("the pixels encoder has no CLS token: use feature='patch'")
        if weights is not None or train:
            raise ValueError("the pixels encoder has no weights to load or train")
        backbone = PixelPatchEncoder(width, blur, gain, generator)
        return VisualEncoder(backbone, name=name, emb_dim=width, patch_size=PixelPatchEncoder.patch_size,
                             feature=feature, is_dino=False, trainable=False)  # fmt: skip
    if name == "conv":
        if feature != "patch":
            raise ValueError("the conv encoder has no CLS token: use feature='patch'")
        backbone = _init_conv_(_on_meta(lambda: ConvPatchEncoder(width)), generator)
        trainable = True if train is None else train
        return VisualEncoder(
            backbone,
            name=name,
            emb_dim=width,
            patch_size=16,
            feature=feature,
            is_dino=False,
            trainable=trainable,
        )
    arch = name.removeprefix("dinov2_")
    if arch == "tiny":
        if weights is not None:
            raise ValueError("dinov2_tiny is a random test model and takes no weights")
        model = _on_meta(lambda: DinoVisionTransformer(embed_dim=width, depth=depth, num_heads=heads))
        init_weights_(model, generator)
    else:
        model = _on_meta(lambda: dinov2_vit(arch))
        if pretrained:
            sd, source = _pretrained_state_dict(arch, weights, allow_download)
            load_dinov2_state_dict(model, sd, source=source)
            logger.info("loaded %s weights from %s", name, source)
        elif weights is not None:
            raise ValueError(f"weights={weights!r} given with pretrained=False")
        else:
            logger.warning("%s built with random weights (pretrained=False)", name)
            init_weights_(model, generator)
    return VisualEncoder(
        model.eval(),
        name=name,
        emb_dim=model.num_features,
        patch_size=model.patch_size,
        feature=feature,
        is_dino=True,
        trainable=bool(train),
    )


def encoder_fingerprint(encoder: nn.Module) -> str:
    """Short sha256 over the state dict (names, dtypes, shapes, bytes): identifies which weights an encoder holds."""
    digest = hashlib.sha256()
    for key, tensor in sorted(encoder.state_dict().items()):
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy())  # via uint8: numpy has no bfloat16
    return digest.hexdigest()[:16]
