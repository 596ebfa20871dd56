"""Linear probe of scene attributes from a tokenizer's frozen quantized features.

How much of "what is where" do the codes carry, readable by a linear model? Each of the 3x3 cells of a synthetic
scene gets a label per attribute (shape / colour / size, plus an "empty" class). For grid tokenizers (2D, dual,
video on images) the latents are average-pooled to 6x6 and each cell's 2x2 block is concatenated, which keeps a
coarse layout inside the cell (a pooled mean alone cannot tell a triangle from a diamond of the same colour); one
classifier per attribute is shared by all cells. 1D tokens have no grid, so each cell gets its own classifier over
all K token vectors. Classifiers are scikit-learn logistic regressions fitted on one split and scored on another,
over the occupied cells only (the many empty cells would inflate the score).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

ATTRIBUTES = ("shape", "color", "size")
CELLS = 9


@torch.no_grad()
def probe_latents(model, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Quantized latents of ``images`` (N, 3, H, W): (N, D, h, w) for grid tokenizers (the dual tokenizer's two
    codebooks stacked on D, the video tokenizer's single latent frame), (N, K, D) for 1D tokenizers."""
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(images), batch_size):
        out = model.quantize(images[start : start + batch_size].to(device))
        z = torch.cat([t for t in out if isinstance(t, torch.Tensor)], dim=1)
        chunks.append((z[:, :, 0] if z.ndim == 5 else z).float().cpu())
    return torch.cat(chunks)


def cell_features(latents: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) latents -> (B, 9, 4 * D) per-cell features, cells in row-major order."""
    pooled = F.adaptive_avg_pool2d(latents.float(), 6)
    return rearrange(pooled, "b d (r i) (c j) -> b (r c) (i j d)", r=3, c=3, i=2, j=2)


def cell_targets(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Scene labels (B, max_objects, 4) with rows (shape, colour, size, cell), -1 padded -> per attribute (B, 9)
    class ids where 0 is "empty" and k + 1 is attribute value k."""
    out = {name: torch.zeros(labels.shape[0], CELLS, dtype=torch.long) for name in ATTRIBUTES}
    for i, rows in enumerate(labels):
        for row in rows[rows[:, 0] >= 0]:
            for a, name in enumerate(ATTRIBUTES):
                out[name][i, row[3]] = row[a] + 1
    return out


def _fit_score(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> np.ndarray:
    """Hits (bool per test sample) of a standardised logistic regression."""
    # imported here: only the probe needs scikit-learn, so importing tokenizers_vis.evaluation does not pay for it
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(max_iter=1000).fit(scaler.transform(x_train), y_train)
    return clf.predict(scaler.transform(x_test)) == y_test


def linear_probe(
    train_latents: torch.Tensor, train_labels: torch.Tensor, test_latents: torch.Tensor, test_labels: torch.Tensor
) -> dict[str, float]:
    """Accuracy per attribute over the occupied test cells and their mean (``"mean"``); latents as returned by
    :func:`probe_latents`, labels as the scenes' ``labels``."""
    if train_latents.ndim not in (3, 4) or train_latents.shape[1:] != test_latents.shape[1:]:
        raise ValueError(f"expected matching (N, D, h, w) or (N, K, D) latents, got {tuple(train_latents.shape)}")
    y_train, y_test = cell_targets(train_labels), cell_targets(test_labels)
    occupied = (y_test["shape"] > 0).numpy()
    scores = {}
    for name in ATTRIBUTES:
        if train_latents.ndim == 4:  # one classifier shared by the cells of a grid
            hits = _fit_score(
                cell_features(train_latents).flatten(0, 1).numpy(),
                y_train[name].flatten().numpy(),
                cell_features(test_latents).flatten(0, 1).numpy(),
                y_test[name].flatten().numpy(),
            ).reshape(occupied.shape)
        else:  # 1D tokens: one classifier per cell over all tokens
            x_train, x_test = train_latents.flatten(1).numpy(), test_latents.flatten(1).numpy()
            hits = np.stack(
                [
                    _fit_score(x_train, y_train[name][:, c].numpy(), x_test, y_test[name][:, c].numpy())
                    for c in range(CELLS)
                ],
                axis=1,
            )
        scores[name] = float(hits[occupied].mean())
    scores["mean"] = float(np.mean([scores[n] for n in ATTRIBUTES]))
    return scores
