"""Time-correlated ("coloured") Gaussian noise for sampling action sequences (iCEM, Pinneri et al. 2020, sec. 3.1).

A sequence of H steps has power spectrum ``S(f) ~ 1 / f^beta`` along the horizon: beta = 0 is white noise (CEM's
i.i.d. samples), beta = 2 is Brownian-like (smooth, low-frequency), which suits controllers whose good action
sequences are smooth. Each action dimension of each sample is an independent sequence.

Construction: draw a complex spectrum with independent N(0, s_k^2) real and imaginary parts, ``s_k = f_k^(-beta/2)``
(the DC term uses the lowest non-zero frequency 1/H, so it stays finite), take the inverse real FFT and divide by
the exact standard deviation of the result, so every step of every sequence is marginally N(0, 1) whatever beta:
``var(x_t) = (s_0^2 + 4 * sum_{0<k<H/2} s_k^2 + s_{H/2}^2) / H^2`` (the DC and, for even H, the Nyquist
component are real and count once; every other bin and its mirror image add ``2 Re(X_k e^{i w t})``). The draws come from :func:`~dinowm_core.planning.common.randn`, so one generator per
episode gives a batched draw equal to the per-episode draws.
"""

from __future__ import annotations

import torch

from dinowm_core.planning.common import Generators, randn


def spectrum_scale(horizon: int, beta: float) -> torch.Tensor:
    """Amplitude s_k (F,) of the rfft bins k = 0..H//2: ``f_k^(-beta/2)``, f_0 replaced by 1/H."""
    freqs = torch.fft.rfftfreq(horizon, dtype=torch.float64)
    if horizon > 1:
        freqs[0] = freqs[1]
    else:
        freqs[0] = 1.0  # one step: only a DC term, white whatever beta
    return freqs ** (-beta / 2.0)


def colored_noise(
    shape: tuple[int, int, int, int], beta: float, generator: Generators, device: torch.device
) -> torch.Tensor:
    """Standard normal (B, N, H, A) with power spectrum 1/f^beta along H, per episode when a generator list is
    given. beta = 0 is white noise (but is still drawn through the spectrum; use ``randn`` for CEM's stream)."""
    b, n, h, a = shape
    scale = spectrum_scale(h, beta)  # (F,)
    f = scale.numel()
    parts = randn((b, n, a, f, 2), generator, device).double()  # (B, N, A, F, re|im)
    real, imag = parts[..., 0] * scale.to(device), parts[..., 1] * scale.to(device)
    imag[..., 0] = 0.0  # the DC term of a real signal is real
    last_real = h % 2 == 0 and h > 1
    if last_real:
        imag[..., -1] = 0.0  # so is the Nyquist term for an even length
    # irfft (norm="backward") computes (1/H) * sum over the full Hermitian spectrum.
    x = torch.fft.irfft(torch.complex(real, imag), n=h, dim=-1)  # (B, N, A, H)
    mid = scale[1:-1] if last_real else scale[1:]
    power = scale[0] ** 2 + 4 * (mid**2).sum() + (scale[-1] ** 2 if last_real else 0.0)
    x = x / (power.sqrt() / h).to(device)
    return x.transpose(-1, -2).float()  # (B, N, H, A)
