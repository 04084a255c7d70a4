"""The DINO-WM world model (reference section 1): frozen encoder -> latent z -> ViT predictor -> decoder.

Tensor conventions (as the reference):
    obs = {"visual": (B, T, 3, H, W) in [-1, 1], "proprio": (B, T, Dp) normalized}
    act = (B, T, frameskip * d) normalized, frameskip-concatenated
    z   = (B, T, P', D): channel concat  -> P' = P,     D = Dv + Dp*rp + Da*ra  ([visual | proprio | action])
                         token concat    -> P' = P + 2, D = Dv  (proprio token, then action token)

Deliberate deviations (see docs/deviations.md): the frozen encoder stays in eval mode and runs without
autograd; the token-concat variant works for any width (the embedders output the visual width); the
predicted-frame decoder loss (logged only) is computed without autograd.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from dinowm_core.config import Config
from dinowm_core.models.embedders import Embedder

Obs = dict[str, torch.Tensor]


class WorldModel(nn.Module):
    def __init__(
        self,
        cfg: Config,
        *,
        encoder: nn.Module,
        predictor: nn.Module | None,
        decoder: nn.Module | None,
        proprio_encoder: Embedder,
        action_encoder: Embedder,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.predictor = predictor
        self.decoder = decoder
        self.proprio_encoder = proprio_encoder
        self.action_encoder = action_encoder
        self.num_hist = cfg.num_hist
        self.num_pred = cfg.num_pred
        self.concat = cfg.concat
        self.visual_dim = int(encoder.emb_dim)
        self.encoder_img_size = cfg.encoder_img_size
        if self.concat == "channel":
            self.proprio_dim = proprio_encoder.emb_dim * cfg.num_proprio_repeat
            self.action_dim = action_encoder.emb_dim * cfg.num_action_repeat
        else:
            self.proprio_dim = self.action_dim = self.visual_dim
        self.latent_loss_weight = cfg.decoder.latent_loss_weight
        #: dataset statistics (action/proprio mean & std), saved as normalization.json with the checkpoint
        self.normalization: dict[str, Any] | None = None

    # ---- modes ----------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> WorldModel:
        super().train(mode)
        train_cfg = self.cfg.training
        if not self.cfg.encoder.train:
            self.encoder.eval()  # frozen: never in train mode (the reference flips it to train)
        if self.predictor is not None and not train_cfg.train_predictor:
            self.predictor.eval()
        if self.decoder is not None and not train_cfg.train_decoder:
            self.decoder.eval()
        return self

    @property
    def emb_dim(self) -> int:
        return self.visual_dim + (self.proprio_dim + self.action_dim if self.concat == "channel" else 0)

    # ---- encoding -------------------------------------------------------------------------------
    def encode_visual(self, visual: torch.Tensor) -> torch.Tensor:
        """visual: (B, T, 3, H, W) in [-1, 1] -> (B, T, P, Dv)"""
        b = visual.shape[0]
        x = rearrange(visual, "b t c h w -> (b t) c h w")
        if x.shape[-1] != self.encoder_img_size or x.shape[-2] != self.encoder_img_size:
            # torchvision Resize(196) on tensors == antialiased bilinear interpolate (reference: 224 -> 196).
            size = (self.encoder_img_size, self.encoder_img_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        if self.cfg.encoder.train:
            tokens = self.encoder(x)
        else:
            with torch.no_grad():
                tokens = self.encoder(x)
        return rearrange(tokens, "(b t) p d -> b t p d", b=b)

    def encode_proprio(self, proprio: torch.Tensor) -> torch.Tensor:
        """proprio: (B, T, Dp_raw) -> (B, T, Dp_emb)"""
        return self.proprio_encoder(proprio)

    def encode_act(self, act: torch.Tensor) -> torch.Tensor:
        """act: (B, T, f*d) -> (B, T, Da_emb)"""
        return self.action_encoder(act)

    def encode_obs(self, obs: Obs) -> Obs:
        """-> {"visual": (B, T, P, Dv), "proprio": (B, T, Dp_emb)}

        ``obs["visual_tokens"]`` (B, T, P, Dv), when present, holds precomputed frozen-encoder tokens (the
        feature cache) and replaces the encoder pass; ``obs["visual"]`` is then only a decoder target.
        """
        proprio = self.encode_proprio(obs["proprio"])
        tokens = obs.get("visual_tokens")
        if tokens is None:
            visual = self.encode_visual(obs["visual"])
        else:
            visual = tokens.to(proprio.dtype if proprio.is_floating_point() else torch.float32)
        return {"visual": visual, "proprio": proprio}

    def combine(self, z_obs: Obs, act_emb: torch.Tensor) -> torch.Tensor:
        """Join encoded obs (B, T, P, Dv) / (B, T, Dp) and action embeddings (B, T, Da) into z (B, T, P', D)."""
        visual, proprio = z_obs["visual"], z_obs["proprio"]
        p = visual.shape[2]
        if self.concat == "channel":
            prop = repeat(proprio, "b t d -> b t p (r d)", p=p, r=self.cfg.num_proprio_repeat)
            acts = repeat(act_emb, "b t d -> b t p (r d)", p=p, r=self.cfg.num_action_repeat)
            return torch.cat([visual, prop, acts], dim=-1)
        return torch.cat([visual, proprio.unsqueeze(2), act_emb.unsqueeze(2)], dim=2)

    def encode(self, obs: Obs, act: torch.Tensor) -> torch.Tensor:
        """obs (B, T, ...), act (B, T, f*d) -> z (B, T, P', D)"""
        return self.combine(self.encode_obs(obs), self.encode_act(act))

    def separate(self, z: torch.Tensor) -> tuple[Obs, torch.Tensor]:
        """z (B, T, P', D) -> ({"visual": (B, T, P, Dv), "proprio": (B, T, Dp)}, act_emb (B, T, Da))"""
        if self.concat == "channel":
            dp_raw = self.proprio_encoder.emb_dim
            da_raw = self.action_encoder.emb_dim
            visual = z[..., : -(self.proprio_dim + self.action_dim)]
            proprio = z[:, :, 0, self.visual_dim : self.visual_dim + dp_raw]
            act = z[:, :, 0, self.visual_dim + self.proprio_dim : self.visual_dim + self.proprio_dim + da_raw]
            return {"visual": visual, "proprio": proprio}, act
        return {"visual": z[:, :, :-2], "proprio": z[:, :, -2]}, z[:, :, -1]

    def replace_actions(self, z: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Overwrite the action slot of z (B, T, P', D) with the embedding of act (B, T, f*d).

        Only the action slot changes: a predicted frame keeps its per-patch visual *and* proprio features (the
        reference's ``replace_actions_from_z``), which the next prediction sees as context.
        """
        act_emb = self.encode_act(act)
        if self.concat == "channel":
            acts = repeat(act_emb, "b t d -> b t p (r d)", p=z.shape[2], r=self.cfg.num_action_repeat)
            return torch.cat([z[..., : -self.action_dim], acts.to(z.dtype)], dim=-1)
        return torch.cat([z[:, :, :-1], act_emb.unsqueeze(2).to(z.dtype)], dim=2)

    # ---- prediction -----------------------------------------------------------------------------
    def predict(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, T, P', D) with T <= num_hist -> next-frame predictions (B, T, P', D)"""
        if self.predictor is None:
            raise RuntimeError("this world model has no predictor")
        t = z.shape[1]
        out = self.predictor(rearrange(z, "b t p d -> b (t p) d"))
        return rearrange(out, "b (t p) d -> b t p d", t=t)

    @property
    def has_memory(self) -> bool:
        """Whether the predictor carries a memory across windows (``predictor.memory``)."""
        return hasattr(self.predictor, "forward_memory")

    def init_memory(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> dict[str, torch.Tensor]:
        """An empty memory for ``batch_size`` samples (``{}`` for a memory-free predictor)."""
        return self.predictor.init_state(batch_size, device=device) if self.has_memory else {}

    def predict_memory(
        self, z: torch.Tensor, memory: dict[str, torch.Tensor] | None, commit: int = 0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """z (B, T, P', D) window, ``memory`` of the frames before it -> (next-frame predictions (B, T, P', D), the
        memory after writing z's first ``commit`` frames). Memory-free predictors: ``predict`` and ``{}``."""
        if not self.has_memory:
            return self.predict(z), {}
        t = z.shape[1]
        out, memory = self.predictor.forward_memory(rearrange(z, "b t p d -> b (t p) d"), memory, commit)
        return rearrange(out, "b (t p) d -> b t p d", t=t), memory

    @torch.no_grad()
    def _no_grad_decode(self, z_visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode_visual(z_visual)

    def decode_visual(self, z_visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_visual: (B, T, P, Dv) -> (images (B, T, 3, H, W), vq_loss ())"""
        if self.decoder is None:
            raise RuntimeError("this world model has no decoder")
        b = z_visual.shape[0]
        images, diff = self.decoder(z_visual)
        return rearrange(images, "(b t) c h w -> b t c h w", b=b), diff

    def decode(self, z: torch.Tensor) -> Obs:
        """z: (B, T, P', D) -> {"visual": (B, T, 3, H, W), "proprio": (B, T, Dp) embedding passed through}"""
        z_obs, _ = self.separate(z)
        images, _ = self.decode_visual(z_obs["visual"])
        return {"visual": images, "proprio": z_obs["proprio"]}

    # ---- training loss --------------------------------------------------------------------------
    def loss(
        self, obs: Obs, act: torch.Tensor, *, decode_pred: bool = True, train_decoder: bool = True
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reference ``forward``: z_loss (predictor) + decoder reconstruction on detached true latents.

        obs (B, num_hist + num_pred, ...), act (B, num_hist + num_pred, f*d) -> (loss, detached metrics).
        ``decode_pred=False`` skips the logged-only ``decoder_*_pred`` terms (a decoder pass that never
        affects the loss; the training loop computes them at validation only). ``train_decoder=False`` leaves
        the decoder out of this loss (``training.decoder_every_steps``: the steps between its turns).
        """
        z = self.encode(obs, act)
        metrics: dict[str, torch.Tensor] = {}
        loss = z.new_zeros(())
        window = self.num_hist + self.num_pred
        rollout = self.cfg.training.rollout_steps > 1
        if self.predictor is not None and z.shape[1] > window and not rollout:
            # A long trajectory: consecutive windows, the memory carried across them (sequence training).
            z_loss = self._sequence_loss(z, metrics)
            metrics["z_loss"] = z_loss.detach()
            loss = loss + z_loss
        elif self.predictor is not None:
            z_tgt = z[:, self.num_pred : window].detach()
            z_pred = self.predict(z[:, : self.num_hist])
            z_loss = self._z_loss(z_pred, z_tgt, metrics)
            if rollout:
                z_loss = self._rollout_loss(z, act, z_pred, z_loss, metrics)
            metrics["z_loss"] = z_loss.detach()
            loss = loss + z_loss
            if self.decoder is not None and decode_pred:
                # Logged only, never optimized (reference): decode the predicted latents without autograd.
                pred_obs, _ = self.separate(z_pred.detach())
                images, diff = self._no_grad_decode(pred_obs["visual"])
                recon = F.mse_loss(images, obs["visual"][:, self.num_pred : window])
                metrics["decoder_recon_loss_pred"] = recon
                metrics["decoder_vq_loss_pred"] = diff.detach()
                metrics["decoder_loss_pred"] = recon + self.latent_loss_weight * diff.detach()
        if self.decoder is not None and train_decoder:
            # A rollout window's extra frames are for the predictor: the decoder sees one window's frames.
            rows, frames = self._decoder_rows(z.shape[0]), window if rollout else z.shape[1]
            true_obs, _ = self.separate(z[:rows, :frames].detach())
            images, diff = self.decode_visual(true_obs["visual"])
            recon = F.mse_loss(images, obs["visual"][:rows, :frames])
            dec_loss = recon + self.latent_loss_weight * diff
            metrics["decoder_recon_loss_reconstructed"] = recon.detach()
            metrics["decoder_vq_loss_reconstructed"] = diff.detach()
            metrics["decoder_loss_reconstructed"] = dec_loss.detach()
            loss = loss + dec_loss
        metrics["loss"] = loss.detach()
        return loss, metrics

    def _decoder_rows(self, batch: int) -> int:
        """How many samples of a batch the decoder trains on (``training.decoder_batch_fraction``); every
        sample outside training, so validation measures the decoder on the whole batch."""
        if not self.training:
            return batch
        return max(1, math.ceil(self.cfg.training.decoder_batch_fraction * batch))

    def _z_loss(
        self, z_pred: torch.Tensor, z_tgt: torch.Tensor, metrics: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """The predictor's latent MSE (action channels excluded), its visual / proprio parts into ``metrics``."""
        w = self.cfg.training.proprio_loss_weight
        if self.concat == "channel":
            vis = slice(None, self.visual_dim)
            prop = slice(self.visual_dim, self.visual_dim + self.proprio_dim)
            metrics["z_visual_loss"] = F.mse_loss(z_pred[..., vis], z_tgt[..., vis]).detach()
            metrics["z_proprio_loss"] = F.mse_loss(z_pred[..., prop], z_tgt[..., prop]).detach()
            if w == 1:
                return F.mse_loss(z_pred[..., : -self.action_dim], z_tgt[..., : -self.action_dim])
            sq = (z_pred[..., : -self.action_dim] - z_tgt[..., : -self.action_dim]).square()
            return torch.cat([sq[..., vis], w * sq[..., prop]], dim=-1).mean()
        metrics["z_visual_loss"] = F.mse_loss(z_pred[:, :, :-2], z_tgt[:, :, :-2]).detach()
        metrics["z_proprio_loss"] = F.mse_loss(z_pred[:, :, -2], z_tgt[:, :, -2]).detach()
        if w == 1:
            return F.mse_loss(z_pred[:, :, :-1], z_tgt[:, :, :-1])
        sq = (z_pred[:, :, :-1] - z_tgt[:, :, :-1]).square()
        return torch.cat([sq[:, :, :-1], w * sq[:, :, -1:]], dim=2).mean()

    def _rollout_loss(
        self,
        z: torch.Tensor,
        act: torch.Tensor,
        z_pred: torch.Tensor,
        first_loss: torch.Tensor,
        metrics: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Multi-step latent loss (``training.rollout_steps`` = K > 1) over a window of num_hist + K frames.

        Step 1 is the one-step loss (``first_loss`` of ``z_pred``, teacher-forced as the reference); steps 2..K
        continue from its prediction exactly as :meth:`rollout` imagines (the true actions, own predictions as
        context). Returns the mean over the K steps, gradients flowing through the rollout; ``metrics`` gets the
        per-step means and ``z_loss_step_k`` (the last step's loss, to see how far predictions drift)."""
        h, steps = self.num_hist, z.shape[1] - self.num_hist
        start = torch.cat([z[:, :h], self.replace_actions(z_pred[:, -1:], act[:, h : h + 1])], dim=1)
        imagined = self._imagine(start, act[:, : h + steps - 1], lambda w: self.predict(w)[:, -1:])
        later: dict[str, torch.Tensor] = {}
        later_loss = self._z_loss(imagined[:, h + 1 :], z[:, h + 1 :].detach(), later)
        for name, v in later.items():
            metrics[name] = (metrics[name] + (steps - 1) * v) / steps
        metrics["z_loss_step_k"] = self._z_loss(imagined[:, -1:].detach(), z[:, -1:], {}).detach()
        return (first_loss + (steps - 1) * later_loss) / steps

    def _sequence_loss(self, z: torch.Tensor, metrics: dict[str, torch.Tensor]) -> torch.Tensor:
        """z (B, L, P', D), L > num_hist + num_pred: the mean latent loss of the windows starting every
        ``training.window_stride`` frames. The memory starts empty for each trajectory, each window writes the
        frames that leave it before the next one (its first ``stride``), and the memory is detached every
        ``training.tbptt_windows`` windows (truncated backprop through time)."""
        t = self.cfg.training
        stride, tbptt = t.window_stride, t.tbptt_windows
        window = self.num_hist + self.num_pred
        starts = range(0, z.shape[1] - window + 1, stride)
        memory = self.init_memory(z.shape[0], device=z.device)
        total, parts = z.new_zeros(()), {}
        for i, s in enumerate(starts):
            if tbptt and i and i % tbptt == 0:
                memory = {k: v.detach() for k, v in memory.items()}
            z_pred, memory = self.predict_memory(z[:, s : s + self.num_hist], memory, commit=stride)
            window_metrics: dict[str, torch.Tensor] = {}
            total = total + self._z_loss(
                z_pred, z[:, s + self.num_pred : s + window].detach(), window_metrics
            )
            for k, v in window_metrics.items():
                parts[k] = parts.get(k, 0.0) + v
        metrics.update({k: v / len(starts) for k, v in parts.items()})
        metrics["windows"] = torch.tensor(float(len(starts)))
        return total / len(starts)

    # ---- open-loop rollout ----------------------------------------------------------------------
    def rollout(
        self,
        obs0: Obs,
        act: torch.Tensor,
        *,
        z_obs0: Obs | None = None,
        memory: dict[str, torch.Tensor] | None = None,
    ) -> tuple[Obs, torch.Tensor]:
        """Imagine the future: n context frames + N >= n actions -> N + 1 frames.

        obs0 (B, n, ...), act (B, N, f*d) -> (z_obs {"visual": (B, N+1, P, Dv), "proprio": (B, N+1, Dp)},
        z (B, N+1, P', D)). The first n actions belong to the context frames; each predicted frame gets its
        action slot overwritten with the next action; the context is the last <= num_hist frames.
        ``z_obs0`` skips re-encoding when the caller already encoded obs0 (planning). ``memory``: a memory
        predictor's memory of the frames before the context (it may hold fewer rows than B: each row is read by
        ``B / rows`` consecutive samples); every step reads it and none writes it (imagined frames are never
        remembered).
        """
        if z_obs0 is None:
            z_obs0 = self.encode_obs(obs0)
        n = z_obs0["visual"].shape[1]
        if act.shape[1] < n:
            raise ValueError(
                f"rollout needs at least {n} actions (one per context frame), got {act.shape[1]}"
            )
        z = self.combine(z_obs0, self.encode_act(act[:, :n]))

        def step(window: torch.Tensor) -> torch.Tensor:
            if memory is None or not self.has_memory:
                return self.predict(window)[:, -1:]
            return self.predict_memory(window, memory, commit=0)[0][:, -1:]

        z = self._imagine(z, act, step)
        z_obs, _ = self.separate(z)
        return z_obs, z

    def _imagine(self, z: torch.Tensor, act: torch.Tensor, step) -> torch.Tensor:
        """z (B, n, P', D) frames whose actions are set, act (B, N, f*d), N >= n -> z (B, N + 1, P', D): each
        frame predicted by ``step`` (last num_hist frames -> next frame) from the frames before it, its action
        slot then set to its action (the last frame keeps its predicted slot)."""
        for t in range(z.shape[1], act.shape[1]):
            z_next = step(z[:, -self.num_hist :])
            z = torch.cat([z, self.replace_actions(z_next, act[:, t : t + 1])], dim=1)
        return torch.cat([z, step(z[:, -self.num_hist :])], dim=1)
