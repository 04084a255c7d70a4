"""The memory predictor: the frame-causal ViT of DINO-WM plus a memory, composed from a store and a reader.

What is stored (``predictor.memory.store``: ``neural``, ``lookup``, ``ssm``, ``selective_ssm``, ``ssd``, ``mlstm``,
``segment``) and how a block reads it (``predictor.memory.reader``: ``context``, ``gate``, ``cross_attention``,
``adanorm``, ``mixer``) are separate config choices; ``conf/predictor/*.yaml`` names the combinations the memory
variant of DINO-WM used (``mac_mem_vit``, ``ssm_vit``, ``mamba``, ``transformerxl``, ...).

``forward_memory(x, state, commit) -> (out, state)``: ``x`` is the window (B, T*P, D) as for the ViT; ``state``
the memory of the frames before it (``init_state``); ``commit`` how many of the window's first frames leave it
after this step and are written (training: the window stride; MPC: the frames executed actions pushed out;
candidate rollouts: 0, so they read the episode's memory and never write it). ``forward(x)`` is the same with an
empty memory: a memory predictor works wherever the ViT does.

Attention masks come from a per-token frame index: a query at frame ``t`` sees keys at frames ``<= t``. Memory
tokens read for frame ``t`` carry index ``t``; persistent tokens and Transformer-XL's cached keys (frames before
the window) carry ``-1`` and are seen by every frame. Memory and persistent tokens enter attention as extra keys
and values (they are not carried through the residual stream), so a window of ``T*P`` query tokens costs
``T*P x (T*P + extra)`` scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from dinowm_core.config import MemoryConfig
from dinowm_core.models.memory.base import RecurrentCell, RetrievalStore, State
from dinowm_core.models.memory.readers import (
    AdaNorm,
    AdditiveActions,
    ContextTokens,
    CrossAttention,
    MemoryGate,
    PersistentTokens,
)
from dinowm_core.models.memory.segment import SegmentCache
from dinowm_core.models.predictor import Attention

RETRIEVAL = ("neural", "lookup")
RECURRENT = ("ssm", "selective_ssm", "ssd", "mlstm")


def build_store(cfg: MemoryConfig, dim: int, num_tokens: int) -> RetrievalStore | RecurrentCell:
    """The store ``cfg.store`` names, at width ``dim`` (``num_tokens``: tokens per frame, for the cells)."""
    if cfg.store == "neural":
        from dinowm_core.models.memory.neural import NeuralMemory

        return NeuralMemory(dim, hidden=cfg.hidden, lr=cfg.lr, momentum=cfg.momentum, decay=cfg.decay)
    if cfg.store == "lookup":
        from dinowm_core.models.memory.lookup import LookupMemory

        return LookupMemory(dim, capacity=cfg.capacity, top_k=cfg.tokens)
    if cfg.store == "ssm":
        from dinowm_core.models.memory.ssm import SSMMemory

        return SSMMemory(dim, num_tokens=num_tokens, state_dim=cfg.state_dim)
    if cfg.store == "selective_ssm":
        from dinowm_core.models.memory.ssm import SelectiveSSM

        return SelectiveSSM(dim, num_tokens=num_tokens, state_dim=cfg.state_dim)
    if cfg.store == "ssd":
        from dinowm_core.models.memory.ssd import SelectiveSSD

        return SelectiveSSD(dim, num_tokens=num_tokens, state_dim=cfg.state_dim)
    if cfg.store == "mlstm":
        from dinowm_core.models.memory.mlstm import mLSTMMemory

        return mLSTMMemory(dim, num_tokens=num_tokens)
    raise ValueError(f"predictor.memory.store={cfg.store!r} has no store module")


class TokenMixer(nn.Module):
    """An MLP across the tokens of one frame (MLP-Mixer): spatial mixing for the attention-free ``mamba``."""

    def __init__(self, num_tokens: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(nn.Linear(num_tokens, 2 * num_tokens), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(2 * num_tokens, num_tokens))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, P, D) -> (B, T, P, D), each frame mixed over its own P tokens only"""
        return self.net(self.norm(x).transpose(-1, -2)).transpose(-1, -2)


class Block(nn.Module):
    """Pre-norm block: [recurrent mixer] -> [token mixer] -> [self-attention] -> [cross-attention] -> MLP."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float, *, attention: bool,
                 cell: RecurrentCell | None, token_mix: int, cross: bool, ada: bool) -> None:  # fmt: skip
        super().__init__()
        self.cell = cell
        self.cell_norm = nn.LayerNorm(dim) if cell is not None else None
        self.token_mix = TokenMixer(token_mix, dim, dropout) if token_mix else None
        self.attn = Attention(dim, heads, dim_head, dropout) if attention else None
        self.cross = CrossAttention(dim, heads, dim_head) if cross else None
        self.ff_norm = AdaNorm(dim) if ada else nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim),
                                nn.Dropout(dropout))  # fmt: skip

    def attend(self, h: torch.Tensor, q_frame: torch.Tensor, extra: torch.Tensor | None,
               extra_frame: torch.Tensor | None, past_kv: tuple[torch.Tensor, torch.Tensor] | None,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """Self-attention of the window's tokens over [extra tokens; cached keys; window] -> (out, k, v)."""
        attn = self.attn
        q, k, v = attn.qkv(h)
        keys, values, frames = [k], [v], [q_frame]
        if past_kv is not None and past_kv[0].shape[2]:
            keys.insert(0, past_kv[0])
            values.insert(0, past_kv[1])
            frames.insert(0, q_frame.new_full((past_kv[0].shape[2],), -1))
        if extra is not None:
            _, ek, ev = attn.qkv(extra)
            keys.insert(0, ek)
            values.insert(0, ev)
            frames.insert(0, extra_frame)
        key_frame = torch.cat(frames)
        mask = key_frame[None, :] <= q_frame[:, None]  # (N, K): never a later frame
        p = attn.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, torch.cat(keys, 2), torch.cat(values, 2), attn_mask=mask,
                                             dropout_p=p)  # fmt: skip
        return attn.to_out(rearrange(out, "b h n d -> b n (h d)")), k, v


class MemoryPredictor(nn.Module):
    """Frame-causal predictor with a memory (see the module docstring). Widths and defaults as ViTPredictor."""

    def __init__(
        self,
        *,
        num_patches: int,
        num_frames: int,
        dim: int,
        memory: MemoryConfig,
        depth: int = 6,
        heads: int = 16,
        dim_head: int = 64,
        mlp_dim: int = 2048,
        dropout: float = 0.1,
        emb_dropout: float = 0.0,
        residual: bool = False,
        attention: bool = True,
        action_channels: int = 0,
    ) -> None:
        super().__init__()
        self.num_patches, self.num_frames, self.dim, self.residual = num_patches, num_frames, dim, residual
        self.memory = memory
        self.depth = depth
        m = memory
        self.pos_embedding = nn.Parameter(torch.randn(1, num_frames * num_patches, dim))
        self.emb_dropout = nn.Dropout(emb_dropout)
        mixer = m.store in RECURRENT and m.reader == "mixer"
        self.blocks = nn.ModuleList(
            Block(
                dim,
                heads,
                dim_head,
                mlp_dim,
                dropout,
                attention=attention,
                cell=build_store(m, dim, num_patches) if mixer else None,  # type: ignore[arg-type]
                token_mix=num_patches if not attention else 0,
                cross=m.reader == "cross_attention",
                ada=m.reader == "adanorm",
            )  # fmt: skip
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        # A retrieval store (one, or one per block), or one recurrent cell over the input read by cross-attention.
        n_stores = (depth if m.per_layer else 1) if m.store in RETRIEVAL else 0
        self.stores = nn.ModuleList(build_store(m, dim, num_patches) for _ in range(n_stores))
        self.cross_cell = build_store(m, dim, num_patches) if m.store in RECURRENT and not mixer else None
        self.context = (nn.ModuleList(ContextTokens(dim, m.tokens, as_tokens=m.reader == "context") for _ in range(n_stores))
                        if m.reader in ("context", "cross_attention", "adanorm") and n_stores else None)  # fmt: skip
        self.gate = MemoryGate(dim) if m.reader == "gate" else None
        self.persistent = PersistentTokens(dim, m.persistent_tokens) if m.persistent_tokens else None
        self.additive = AdditiveActions(dim, action_channels, depth) if m.additive_actions else None
        self.segment = (
            SegmentCache(depth, heads, dim_head, m.capacity, num_patches) if m.store == "segment" else None
        )

    # ---- memory state ------------------------------------------------------------------------------------------
    def init_state(self, batch_size: int, *, device: torch.device | str | None = None) -> State:
        """An empty memory for ``batch_size`` samples (nothing seen before the window)."""
        device = device if device is not None else self.pos_embedding.device
        state: State = {}
        for i, store in enumerate(self.stores):
            state |= {f"store{i}.{k}": v for k, v in store.init_state(batch_size, device=device).items()}
        for i, block in enumerate(self.blocks):
            if block.cell is not None:
                state |= {
                    f"cell{i}.{k}": v for k, v in block.cell.init_state(batch_size, device=device).items()
                }
        if self.cross_cell is not None:
            state |= {
                f"cross.{k}": v for k, v in self.cross_cell.init_state(batch_size, device=device).items()
            }
        if self.segment is not None:
            state |= self.segment.init_state(batch_size, device=device)
        return state

    @staticmethod
    def _rows(state: State, batch: int, commit: int) -> State:
        """A memory of ``r`` episodes read by ``batch = r * n`` rows (each episode's rows consecutive, as planning
        candidates): retrieval stores read it as is (grouped queries, no copy); the recurrent and segment
        states, which evolve within the window, are repeated per row. Only a read: nothing may be written."""
        rows = next(iter(state.values())).shape[0] if state else batch
        if rows == batch:
            return state
        if commit or batch % rows:
            raise ValueError(f"a memory of {rows} rows cannot serve a batch of {batch}"
                             f"{' and write to it' if commit else ''}")  # fmt: skip
        n = batch // rows
        return {k: v if k.startswith("store") else v.repeat_interleave(n, dim=0) for k, v in state.items()}

    @staticmethod
    def _part(state: State, prefix: str) -> State:
        return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}

    # ---- forward -----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D) with an empty memory (the ViTPredictor call)."""
        return self.forward_memory(x, None, commit=0)[0]

    def forward_memory(
        self, x: torch.Tensor, state: State | None, commit: int = 0
    ) -> tuple[torch.Tensor, State]:
        """x (B, T*P, D) frame-major window, ``state`` the memory before it (None: empty) -> (out (B, T*P, D),
        the memory after writing the first ``commit`` frames)."""
        b, n, _ = x.shape
        p = self.num_patches
        if n > self.pos_embedding.shape[1] or n % p:
            raise ValueError(f"memory predictor got {n} tokens; whole frames of {p} tokens, at most "
                             f"{self.num_frames} frames")  # fmt: skip
        t = n // p
        if not 0 <= commit <= t:
            raise ValueError(f"commit={commit}: a window of {t} frames can write 0..{t} of them")
        state = self.init_state(b, device=x.device) if state is None else state
        state = self._rows(state, b, commit)
        new: State = {}
        frames_in = x.view(b, t, p, -1)
        q_frame = torch.arange(t, device=x.device).repeat_interleave(p)
        h = self.emb_dropout(x + self.pos_embedding[:, :n])

        # Readers of one retrieval store: queries from each input frame alone, so reads stay causal.
        extra, extra_frame, cross_mem, ada_mem = self._persistent(b, x.device)
        if len(self.stores) == 1:
            extra, extra_frame, cross_mem, ada_mem = self._read(0, frames_in, state, extra, extra_frame)
            new |= self._write(0, frames_in[:, :commit], state)
        if self.cross_cell is not None:
            y, cs = self.cross_cell.scan(frames_in, self._part(state, "cross."), commit)
            cross_mem = rearrange(y, "b t p d -> (b t) p d")
            new |= {f"cross.{k}": v for k, v in cs.items()}
        for i, block in enumerate(self.blocks):
            blk_extra, blk_frame = extra, extra_frame
            if len(self.stores) > 1:  # one memory per block, read and written with the block's input
                hf = h.view(b, t, p, -1)
                blk_extra, blk_frame, cross_mem, ada_mem = self._read(i, hf, state, extra, extra_frame)
                new |= self._write(i, hf[:, :commit], state)
            if block.cell is not None:
                y, cs = block.cell.scan(
                    block.cell_norm(h).view(b, t, p, -1), self._part(state, f"cell{i}."), commit
                )
                h = h + y.reshape(b, n, -1)
                new |= {f"cell{i}.{k}": v for k, v in cs.items()}
            if block.token_mix is not None:
                h = h + block.token_mix(h.view(b, t, p, -1)).reshape(b, n, -1)
            if block.attn is not None:
                past = self.segment.past(state, i) if self.segment is not None else None
                out, k, v = block.attend(h, q_frame, blk_extra, blk_frame, past)
                h = h + out
                if self.segment is not None:  # Transformer-XL: the keys/values of the frames that leave
                    new |= self.segment.extend(state, i, k, v, commit)
            if block.cross is not None and cross_mem is not None:
                h = h + block.cross(h.reshape(b * t, p, -1), cross_mem).reshape(b, n, -1)
            if isinstance(block.ff_norm, AdaNorm):
                mem = ada_mem if ada_mem is not None else h.new_zeros(b, t, h.shape[-1])
                normed = block.ff_norm(h.view(b, t, p, -1), mem).reshape(b, n, -1)
            else:
                normed = block.ff_norm(h)
            h = h + block.ff(normed)
            if self.additive is not None:
                h = h + self.additive(i, x)
        if self.gate is not None:  # MAG: each token's own read (query = its final state, causal)
            store = self.stores[0]
            read = store.read(h.reshape(b, n, -1), self._part(state, "store0."))
            h = self.gate(h, read)
        h = self.norm(h)
        return (x + h if self.residual else h), new

    def _persistent(self, b: int, device: torch.device):
        if self.persistent is None:
            return None, None, None, None
        tokens = self.persistent(b)
        return tokens, torch.full((tokens.shape[1],), -1, device=device, dtype=torch.long), None, None

    def _read(self, i: int, frames: torch.Tensor, state: State, extra, extra_frame):
        """Store ``i`` read for each frame -> (extra tokens, their frame index, cross-attention memory, pooled)."""
        if self.context is None:
            return extra, extra_frame, None, None
        b, t = frames.shape[:2]
        ctx = self.context[i]
        reads = self.stores[i].read(ctx.queries_for(frames), self._part(state, f"store{i}."))  # (B*T, M, D)
        cross_mem = reads if self.memory.reader == "cross_attention" else None
        ada_mem = reads.mean(1).view(b, t, -1) if self.memory.reader == "adanorm" else None
        if self.memory.reader != "context":
            return extra, extra_frame, cross_mem, ada_mem
        tokens = ctx.tokens(reads, b)
        frame = torch.arange(t, device=frames.device).repeat_interleave(reads.shape[1])
        if extra is not None:
            tokens, frame = torch.cat([extra, tokens], 1), torch.cat([extra_frame, frame])
        return tokens, frame, None, None

    def _write(self, i: int, frames: torch.Tensor, state: State) -> State:
        written = self.stores[i].write(frames, self._part(state, f"store{i}."))
        return {f"store{i}.{k}": v for k, v in written.items()}
