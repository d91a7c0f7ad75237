"""``--kd-data-selection`` rules: which scored documents the KD phase trains on.

* ``top:F``       the fraction F of documents with the highest scores (the SLM's
  "challenging yet learnable" end of the ranking);
* ``range:LO:HI`` the documents whose score quantile lies in ``[LO, HI)``
  (``top:F`` is ``range:1-F:1``).

Quantiles are taken over the documents that have a score (NaN documents, too
short to score, are never selected). Ranks are exact: with ``n`` scored
documents sorted by ascending score (ties by document id), ``range:LO:HI``
keeps sorted positions ``floor(LO*n) .. floor(HI*n)-1``, so ``top:F`` keeps
``ceil(F*n)`` documents.

The same rules apply to window scores (``--score-unit window``), unit for unit.
With ``--kd-data-selection-by subset`` a rule is applied within each group (Pile
subset) on its own: the quantiles are the group's, so every subset keeps the same
fraction of its scored units (see :func:`Selection.select`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Selection:
    low: float  # score quantile range [low, high)
    high: float
    text: str

    @classmethod
    def parse(cls, text: str, flag: str = "--kd-data-selection") -> Selection:
        kind, _, rest = text.partition(":")
        try:
            if kind == "top":
                fraction = float(rest)
                low, high = 1.0 - fraction, 1.0
                if not 0.0 < fraction <= 1.0:
                    raise ValueError
            elif kind == "range":
                lo_text, _, hi_text = rest.partition(":")
                low, high = float(lo_text), float(hi_text)
                if not 0.0 <= low < high <= 1.0:
                    raise ValueError
            else:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"{flag} {text!r}: expected 'top:F' with 0 < F <= 1 or 'range:LO:HI' "
                "with 0 <= LO < HI <= 1 (score quantiles)"
            ) from None
        return cls(low, high, text)

    def select(self, scores: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """Sorted ids of the units (documents or windows) this rule keeps.

        ``groups`` (one id per unit): apply the rule within each group separately.
        """
        if groups is None:
            return self._select(scores)
        kept = [np.empty(0, dtype=np.int64)]
        for group in np.unique(groups):
            members = np.flatnonzero(groups == group)
            kept.append(members[self._select(scores[members])])
        return np.sort(np.concatenate(kept))

    def _select(self, scores: np.ndarray) -> np.ndarray:
        scored = np.flatnonzero(np.isfinite(scores))
        order = scored[np.lexsort((scored, scores[scored]))]  # ascending score, then id
        n = len(order)
        # The epsilon keeps 0.29 * 100 (= 28.999...) at position 29.
        kept = order[math.floor(self.low * n + 1e-9) : math.floor(self.high * n + 1e-9)]
        return np.sort(kept)
