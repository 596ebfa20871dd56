"""Adversarial, perceptual and semantic-alignment losses for tokenizer training."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """PatchGAN: (B, 3, H, W) -> (B, 1, H/2^n, W/2^n) realness logits, one per overlapping patch."""

    def __init__(self, channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, num_layers):
            nxt = channels * min(2**i, 8)
            layers += [nn.Conv2d(ch, nxt, 4, 2, 1), nn.GroupNorm(min(32, nxt), nxt), nn.LeakyReLU(0.2)]
            ch = nxt
        layers.append(nn.Conv2d(ch, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def adaptive_gan_weight(
    rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """Scales the generator loss so its gradient at the decoder's last layer matches the reconstruction
    loss's (Esser et al., 2021), which keeps the GAN from swamping reconstruction early on."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


def build_lpips(net: str = "vgg") -> nn.Module:
    """LPIPS from torchmetrics; its backbone weights come from the torchvision hub, so offline this
    fails with an error that says so instead of training without the loss."""
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        metric = LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=False)
    except Exception as err:  # download / missing-package errors come in many types
        raise RuntimeError(
            f"LPIPS ({net}) needs pretrained {net} weights that could not be loaded ({type(err).__name__}: {err}). "
            "They are fetched from the torchvision hub on first use: run once with network access or put them "
            "in the torch hub cache, or train without --lpips-weight."
        ) from err
    for p in metric.parameters():
        p.requires_grad_(False)
    return metric.eval()


def semantic_alignment_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity, averaged over tokens. ``student`` (B, D, h, w) projected tokenizer features are
    resized to the teacher's g x g grid; ``teacher`` (B, g * g, D)."""
    b, n, d = teacher.shape
    g = math.isqrt(n)
    if student.shape[:2] != (b, d):
        raise ValueError(
            f"student features {tuple(student.shape)} do not match teacher features {tuple(teacher.shape)}"
        )
    if student.shape[-2:] != (g, g):
        student = F.interpolate(student.float(), size=(g, g), mode="bilinear", align_corners=False)
    student = student.flatten(2).transpose(1, 2)
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def check_semantic_target(semantic_target: torch.Tensor | None, semantic_dim: int) -> None:
    """Refuses teacher features for a tokenizer built without a semantic projection."""
    if semantic_target is not None and semantic_dim <= 0:
        raise ValueError("a semantic_target needs a tokenizer built with semantic_dim > 0 (the teacher's width)")


def add_semantic_loss(
    losses: dict[str, torch.Tensor], student: torch.Tensor, teacher: torch.Tensor, weight: float
) -> None:
    """Adds ``weight`` x :func:`semantic_alignment_loss` to ``losses["loss"]`` and records it, detached, as
    ``losses["semantic"]``."""
    sem = semantic_alignment_loss(student, teacher)
    losses["loss"] = losses["loss"] + weight * sem
    losses["semantic"] = sem.detach()
