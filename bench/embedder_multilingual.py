"""English all-MiniLM-L6-v2 against multilingual USE v3 on Portuguese questions (``ATALAIA_EMBEDDER_MODEL``).

Data: ``data/multilingual/paraphrases.jsonl``, 20 handbook questions in English, their Portuguese
translation and a Portuguese paraphrase (pt-PT and pt-BR wording), and 20 off-topic Portuguese
questions (``offtopic_pt.txt``). For each model:

- **similarity**: mean cosine of a Portuguese question and its paraphrase, and of unrelated pairs
  (the other 19 questions); the gap separates them. **top-1**: share of Portuguese questions whose
  nearest paraphrase (among the 20) is theirs; **cross-lingual top-1**: the same from the
  Portuguese question to the 20 English ones.
- **drift**: permutation MMD test (the drift detector's statistic, 2,000 permutations) of the
  English questions against (a) their Portuguese translations — the same questions, so a
  multilingual model should not call it drift — and (b) off-topic Portuguese questions, which it
  should. p-values: small means "drift".
- **speed**: texts per second encoding the 60 Portuguese and English questions (median of 3).

Usage::

    .venv/bin/python bench/embedder_multilingual.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atalaia.drift.mmd import mmd_permutation_test  # noqa: E402
from atalaia.metrics.embedding import Embedder  # noqa: E402
from atalaia.models.embedder import load_embedder  # noqa: E402
from atalaia.settings import Settings  # noqa: E402
from bench.common import median  # noqa: E402


def main() -> None:
    rows = [json.loads(line) for line in (ROOT / "data/multilingual/paraphrases.jsonl").read_text().splitlines()]
    offtopic = (ROOT / "data/multilingual/offtopic_pt.txt").read_text(encoding="utf-8").split("\n")
    offtopic = [q for q in offtopic if q.strip()]
    en, pt, para = ([r[k] for r in rows] for k in ("en", "pt", "pt_para"))
    home = Path(tempfile.mkdtemp())
    n = len(rows)
    off_diag = ~np.eye(n, dtype=bool)
    for name in ("all-minilm-l6-v2", "use-multilingual-v3"):
        embedder = Embedder(load_embedder(Settings(home=home, embedder_model=name)))
        texts = en + pt + para
        times = []
        for _ in range(3):
            start = time.perf_counter()
            vectors = embedder.encode(texts)
            times.append(time.perf_counter() - start)
        e, p, q = vectors[:n], vectors[n : 2 * n], vectors[2 * n :]
        sim = p @ q.T
        cross = p @ e.T
        off = embedder.encode(offtopic)
        same = mmd_permutation_test(e, p, n_permutations=2000)
        other = mmd_permutation_test(e, off, n_permutations=2000)
        print(f"{name} ({embedder.dim} dimensions)")
        print(
            f"  pt paraphrase cosine {np.diag(sim).mean():.3f}, unrelated {sim[off_diag].mean():.3f}, "
            f"top-1 {np.mean(sim.argmax(axis=1) == np.arange(n)):.2f}; "
            f"pt->en top-1 {np.mean(cross.argmax(axis=1) == np.arange(n)):.2f} "
            f"(cosine {np.diag(cross).mean():.3f} vs {cross[off_diag].mean():.3f})"
        )
        print(
            f"  drift p-value: en vs same questions in pt {same.p_value:.4f} (MMD² {same.statistic:.4f}); "
            f"en vs off-topic pt {other.p_value:.4f} (MMD² {other.statistic:.4f})"
        )
        print(f"  speed {len(texts) / median(times):.0f} texts/s")


if __name__ == "__main__":
    main()
