"""Per-step staleness statistics of the step's targets (logged every logging step).

* ``staleness_cos_stale``: mean cos(g'(y), g(y)) of the targets' cached and fresh embeddings;
* ``staleness_cos_corrected``: mean cos(h(g'(y)), g(y)) when a corrector ran;
* ``negatives_overlap_fresh``: share of the chosen negatives that are among each query's top-k by fresh scores
  over the step's targets.

Example:
    >>> import torch
    >>> t = torch.eye(3); stats = staleness_metrics(t[:2], t, t, None, torch.tensor([[0, 1], [1, 0]]))
    >>> stats["staleness_cos_stale"]
    1.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def staleness_metrics(q: torch.Tensor, fresh: torch.Tensor, stale: torch.Tensor, corrected: torch.Tensor | None,
                      inverse: torch.Tensor) -> dict[str, float]:
    """Statistics of one step. ``fresh`` / ``stale`` / ``corrected``: (U, d) of the step's targets; ``inverse``:
    (B, 1 + k) columns of each query's positive and chosen negatives."""
    t32 = fresh.detach().float()
    out = {"staleness_cos_stale": float(F.cosine_similarity(stale.to(t32.device), t32, dim=-1).mean())}
    if corrected is not None:
        out["staleness_cos_corrected"] = float(F.cosine_similarity(corrected.detach().float(), t32, dim=-1).mean())
    k = inverse.shape[1] - 1
    if k and stale.shape[0] > k + 1:
        scores = q.detach().float() @ t32.T
        scores.scatter_(1, inverse[:, :1].to(scores.device), float("-inf"))
        top_fresh = scores.topk(k, dim=1).indices.cpu()
        chosen = inverse[:, 1:]
        out["negatives_overlap_fresh"] = float((chosen[:, :, None] == top_fresh[:, None, :]).any(-1).float().mean())
    return out
