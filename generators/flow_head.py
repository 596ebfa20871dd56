"""Flow-matching head of the next-X generator: a small MLP that turns the transformer's per-element condition into a
sample of that element's continuous latent (MAR's diffusion head, with rectified flow instead of DDPM).

Rectified flow in diffusers' convention: x_t = t * noise + (1 - t) * x0 with t in [0, 1] (1 = pure noise), and the
head predicts the velocity noise - x0, so :class:`diffusers.FlowMatchEulerDiscreteScheduler` integrates it from
t = 1 down to 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn


class TimeEmbedding(nn.Module):
    """Time or noise level t in [0, 1], any shape -> ``(*t.shape, dim)``: diffusers' sinusoidal features of 1000 t
    (the scheduler's timestep scale) and a two-layer MLP."""

    def __init__(self, dim: int, channels: int = 256) -> None:
        super().__init__()
        self.proj = Timesteps(channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.embed = TimestepEmbedding(channels, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = self.proj(t.flatten().float() * 1000).to(self.embed.linear_1.weight.dtype)
        return self.embed(features).unflatten(0, t.shape)


class AdaLNBlock(nn.Module):
    """Residual MLP block whose normalisation shift / scale and residual gate come from the condition (DiT's
    adaLN-Zero: the gate starts at zero, so every block starts as the identity)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(c).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class FlowHead(nn.Module):
    """Velocity predictor ``(x_t (N, C), t (N,), z (N, D)) -> (N, C)``, one element at a time: ``depth`` adaLN
    blocks of ``width`` channels conditioned on z + an embedding of t."""

    def __init__(self, cond_dim: int, latent_dim: int, width: int = 256, depth: int = 3) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.time_embed = TimeEmbedding(width)
        self.cond_proj = nn.Linear(cond_dim, width)
        self.in_proj = nn.Linear(latent_dim, width)
        self.blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.out_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, latent_dim)
        for layer in (self.out_modulation[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        c = self.cond_proj(z) + self.time_embed(t)
        h = self.in_proj(x.to(c.dtype))
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.out_modulation(c).chunk(2, dim=-1)
        return self.out(self.out_norm(h) * (1 + scale) + shift)

    def loss(self, z: torch.Tensor, x0: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        """Flow-matching MSE for conditions ``(..., D)`` and clean elements ``(..., C)``. Each element is used
        ``repeats`` times with fresh noise and time (MAR's trick: more head updates per transformer pass).
        t ~ U(0, 1), matching the uniform sigma grid of the Euler sampler, so every sampling step is trained
        equally."""
        z = z.flatten(0, -2).repeat(repeats, 1)
        x0 = x0.flatten(0, -2).float().repeat(repeats, 1)
        t = torch.rand(x0.shape[0], device=x0.device)
        noise = torch.randn_like(x0)
        x_t = t[:, None] * noise + (1 - t[:, None]) * x0
        return F.mse_loss(self(x_t, t, z).float(), noise - x0)

    @torch.no_grad()
    def sample(
        self,
        z: torch.Tensor,
        z_uncond: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        steps: int = 10,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Elements ``(..., C)`` (float32) for conditions ``(..., D)`` by ``steps`` Euler steps from noise scaled by
        ``temperature``. With ``z_uncond`` the velocity is guided: v_u + guidance_scale * (v_c - v_u). The only
        randomness is the initial noise, drawn from ``generator``."""
        lead = z.shape[:-1]
        z = z.flatten(0, -2)
        x = torch.randn(z.shape[0], self.latent_dim, generator=generator, device=z.device) * temperature
        if z_uncond is not None:
            z = torch.cat([z, z_uncond.flatten(0, -2)])
        scheduler = FlowMatchEulerDiscreteScheduler()  # stateful (step index), so one per call
        scheduler.set_timesteps(steps, device=z.device)
        for timestep in scheduler.timesteps:
            t = (timestep / 1000).expand(z.shape[0])
            if z_uncond is None:
                v = self(x, t, z).float()
            else:
                v_cond, v_uncond = self(torch.cat([x, x]), t, z).float().chunk(2)
                v = v_uncond + guidance_scale * (v_cond - v_uncond)
            x = scheduler.step(v, timestep, x).prev_sample
        return x.unflatten(0, lead)
