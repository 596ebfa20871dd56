"""Visual-token pruning for Hugging Face VLMs (LLaVA, LLaVA-NeXT / OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL,
Gemma 3, InternVL, Idefics3 / SmolVLM, Mistral 3; one :data:`FAMILIES` row each): ToDRE, IDPruner and baselines.

```python
from pruning import apply_pruning
handle = apply_pruning(model, method="idpruner", keep_ratio=0.25)
out = model.generate(**inputs)
handle.remove()
```
"""

from .adapters import FAMILIES, SUPPORTED_MODELS, Adapter, Family, adapter_for
from .compat import SUPPORTED_RANGE, TransformersCompatibilityError
from .methods import IMPORTANCE_OPTIONS, METHODS, PruningMethod
from .patch import PruneRecord, PruningHandle, apply_pruning
from .relevance import last_token_attention
from .selection import (
    IMPORTANCE_SOURCES,
    importance_scores,
    indices_to_mask,
    k_center,
    max_min_diversity,
    mmr,
    random_selection,
    topk_importance,
)

__all__ = [
    "FAMILIES",
    "Family",
    "IMPORTANCE_OPTIONS",
    "IMPORTANCE_SOURCES",
    "METHODS",
    "SUPPORTED_MODELS",
    "SUPPORTED_RANGE",
    "Adapter",
    "PruneRecord",
    "PruningHandle",
    "PruningMethod",
    "TransformersCompatibilityError",
    "adapter_for",
    "apply_pruning",
    "importance_scores",
    "indices_to_mask",
    "k_center",
    "last_token_attention",
    "max_min_diversity",
    "mmr",
    "random_selection",
    "topk_importance",
]
