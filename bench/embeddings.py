"""all-MiniLM-L6-v2: torch (sentence-transformers) against ONNX Runtime float32 and int8.

Texts are the project's own: **short** = the QA questions (``data/qa/*.jsonl``, about 12
tokens), **medium** = their reference answers (about 30 tokens), **long** = handbook passages
(``data/regulations``, cut at the embedder's 128 tokens). Each set is repeated to ``--texts``
texts and encoded through :class:`atalaia.metrics.embedding.Embedder` (what the worker calls:
batch 64, 128 tokens), the backends interleaved, ``--repeats`` times; the table has the median
texts/s, the ratio to torch, and the cosine of each vector to torch's (minimum and mean).

The ONNX export is written to a temporary ``ATALAIA_HOME`` (or ``--home``), as
``atalaia models prepare`` does.

With ``--openvino DIR`` (a folder where ``openvino`` is installed, e.g. by ``uv pip install
--target DIR openvino``; it is not a project dependency) the same ONNX export also runs on
OpenVINO's CPU plugin (``PERFORMANCE_HINT=LATENCY``), tokenized and batched as ONNX Runtime is,
so that the choice between the two runtimes is a measurement.

Usage::

    .venv/bin/python bench/embeddings.py [--texts 512] [--repeats 5] [--home DIR] [--openvino DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atalaia.metrics.embedding import Embedder  # noqa: E402
from atalaia.models.embedder import clear_embedder_cache, load_embedder  # noqa: E402
from atalaia.models.embedder_onnx import export_embedder_onnx, onnx_dir  # noqa: E402
from atalaia.models.prepare import locate_embedder  # noqa: E402
from atalaia.rag import chunk_regulations  # noqa: E402
from atalaia.settings import Settings  # noqa: E402
from bench.common import median  # noqa: E402

BACKENDS = ("torch", "onnx", "onnx-int8")


class OpenVinoSession:
    """The ONNX export compiled by OpenVINO, behind ONNX Runtime's ``run(None, feed)``."""

    def __init__(self, model: Path) -> None:
        import openvino as ov

        core = ov.Core()
        self._compiled = core.compile_model(core.read_model(str(model)), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
        self._inputs = {i.get_any_name() for i in self._compiled.inputs}

    def run(self, _outputs: object, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self._compiled({k: v for k, v in feed.items() if k in self._inputs})
        return [result[self._compiled.output(0)]]


def openvino_embedder(home: Path) -> Embedder:
    """ONNX Runtime's embedder (tokenizer, length-sorted batches) with OpenVINO running the graph."""
    from atalaia.models.embedder_onnx import VARIANT_FILES, OnnxEmbedder

    folder = onnx_dir(Settings(home=home))
    model = OnnxEmbedder(folder)
    model._session = OpenVinoSession(folder / VARIANT_FILES["onnx"])  # type: ignore[assignment]
    return Embedder(model)


def project_texts() -> dict[str, list[str]]:
    """The three input sets: QA questions, QA answers, handbook passages."""
    rows = []
    for name in ("train.jsonl", "holdout.jsonl"):
        rows += [json.loads(line) for line in (ROOT / "data/qa" / name).read_text().splitlines() if line.strip()]
    passages = [p.text for p in chunk_regulations(ROOT / "data/regulations")]
    return {
        "short": [r["question"] for r in rows],
        "medium": [r["answer"] for r in rows],
        "long": [p for p in passages if len(p.split()) >= 90] or passages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=512, help="texts per set per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--home", type=Path, default=None, help="ATALAIA_HOME of the export (default: temporary)")
    parser.add_argument("--openvino", type=Path, default=None, help="folder with openvino installed (adds it)")
    args = parser.parse_args()

    home = args.home or Path(tempfile.mkdtemp(prefix="atalaia-bench-emb-"))
    base = Settings(home=home)
    t0 = time.perf_counter()
    export_embedder_onnx(locate_embedder(), onnx_dir(base))
    print(f"ONNX export in {onnx_dir(base)}: {time.perf_counter() - t0:.1f} s (reused when already there)")
    clear_embedder_cache()
    backends: tuple[str, ...] = BACKENDS
    embedders = {b: Embedder(load_embedder(Settings(home=home, embedder_backend=b))) for b in BACKENDS}
    if args.openvino:
        sys.path.append(str(args.openvino))
        embedders["openvino"] = openvino_embedder(home)
        backends = (*BACKENDS, "openvino")
    sets = project_texts()
    print(f"{'set':7} {'words/text':>10} {'backend':10} {'texts/s':>9} {'x torch':>8} {'cos min':>8} {'cos mean':>9}")
    for label, pool in sets.items():
        texts = [pool[i % len(pool)] for i in range(args.texts)]
        reference = embedders["torch"].encode(pool)
        times: dict[str, list[float]] = {b: [] for b in backends}
        for b in backends:
            embedders[b].encode(texts[:64])  # warm-up: first-run allocations
        for _ in range(args.repeats):
            for b in backends:
                start = time.perf_counter()
                embedders[b].encode(texts)
                times[b].append(time.perf_counter() - start)
        words = np.mean([len(t.split()) for t in pool])
        torch_rate = args.texts / median(times["torch"])
        for b in backends:
            rate = args.texts / median(times[b])
            cos = np.einsum("ij,ij->i", embedders[b].encode(pool), reference)
            print(
                f"{label:7} {words:10.1f} {b:10} {rate:9.1f} {rate / torch_rate:8.2f} "
                f"{cos.min():8.5f} {cos.mean():9.5f}"
            )


if __name__ == "__main__":
    main()
