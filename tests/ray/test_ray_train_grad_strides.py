"""DDP grad layout (no cluster needed): the hooks ``RayTrainHooks.wrap_model`` adds before ``prepare_model`` give
every trainable parameter a grad with the parameter's own strides, which DDP's bucket views copy, so DDP has
nothing to warn about ("Grad strides do not match bucket view strides"), and they change no value.
"""

from __future__ import annotations

import copy

import torch

from dinowm_core.models.decoder import VQVAEDecoder


def test_grads_take_the_parameter_strides_and_keep_their_values():
    from ray_jobs.train_worker import _match_grad_strides

    torch.manual_seed(0)
    plain = VQVAEDecoder(emb_dim=64, channel=64, n_res_block=1, n_res_channel=32)  # decoder=vqvae_small
    hooked = copy.deepcopy(plain)
    _match_grad_strides(hooked)
    z = torch.randn(2, 2, 16, 64)  # (B, T, P, E): a 4x4 patch grid
    for model in (plain, hooked):
        images, _ = model(z)
        images.square().mean().backward()

    params = list(zip(plain.named_parameters(), hooked.parameters(), strict=True))
    # The cause: channels-last 1x1 conv weight grads, strided differently from their parameters on size-1 dims.
    assert [name for (name, p), _ in params if p.grad.stride() != p.stride()] == [
        "upsample_b.blocks.1.conv.3.weight",
        "dec.blocks.1.conv.3.weight",
    ]
    for (name, p), q in params:
        assert q.grad.stride() == q.stride(), name
        assert torch.equal(q.grad, p.grad), name
