"""Where an embedding batch's time goes: torch against ONNX Runtime float32, per operator.

One batch of 64 project texts (``--set short|medium|long``, as in ``bench/embeddings.py``),
padded as sentence-transformers pads it (128 tokens at most), run a few times on each runtime for
the wall time, then once under each runtime's own profiler (``torch.profiler``; ONNX Runtime's
``enable_profiling``) for the share of operator time by kind. It also prints the dense arithmetic
of the batch (6 layers of QKV, output and FFN projections plus attention scores and values) and
the GFLOP/s each runtime reaches, to set against the machine's float32 peak (cores × FMA units ×
SIMD lanes × 2 × clock). Usage::

    .venv/bin/python bench/embeddings_profile.py [--set long] [--home DIR]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atalaia.models.embedder_onnx import VARIANT_FILES, export_embedder_onnx, onnx_dir  # noqa: E402
from atalaia.models.prepare import locate_embedder  # noqa: E402
from atalaia.settings import Settings  # noqa: E402
from bench.embeddings import project_texts  # noqa: E402


def kind(op: str) -> str:
    """The operator's kind: matrix products (attention included), layer norm, GELU, other.

    >>> kind("aten::addmm"), kind("SkipLayerNormalization"), kind("BiasGelu"), kind("Add")
    ('matmul/attention', 'layernorm', 'gelu', 'other')
    """
    name = op.lower()
    if any(k in name for k in ("addmm", "aten::mm", "bmm", "matmul", "gemm", "linear", "attention")):
        return "matmul/attention"
    if "norm" in name:
        return "layernorm"
    if "gelu" in name or "erf" in name:
        return "gelu"
    return "other"


def shares(times: dict[str, float]) -> str:
    """``kind: percent`` of the total, largest first."""
    total = sum(times.values()) or 1.0
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(times.items(), key=lambda kv: -kv[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default="long", choices=("short", "medium", "long"))
    parser.add_argument("--home", type=Path, default=None, help="ATALAIA_HOME of the export (default: temporary)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch
    from sentence_transformers import SentenceTransformer
    from torch.profiler import ProfilerActivity, profile

    home = args.home or Path(tempfile.mkdtemp(prefix="atalaia-bench-emb-"))
    folder = export_embedder_onnx(locate_embedder(), onnx_dir(Settings(home=home)))
    texts = (project_texts()[args.set] * 64)[:64]
    model = SentenceTransformer(str(locate_embedder()), device="cpu")
    model.max_seq_length = 128  # what atalaia.metrics.embedding caps it at
    features = model.tokenize(texts)
    batch, length = features["input_ids"].shape
    print(f"{args.set}: {batch} texts padded to {length} tokens")

    def timed(run: object) -> float:
        for _ in range(2):
            run()  # type: ignore[operator]
        walls = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()  # type: ignore[operator]
            walls.append(time.perf_counter() - start)
        return statistics.median(walls)

    with torch.inference_mode():
        torch_s = timed(lambda: model.forward(dict(features)))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model.forward(dict(features))
    torch_ops: dict[str, float] = collections.Counter()
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            torch_ops[kind(event.key)] += event.self_cpu_time_total

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the worker's session
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "atalaia-ort-profile")
    session = ort.InferenceSession(str(folder / VARIANT_FILES["onnx"]), options, providers=["CPUExecutionProvider"])
    feed = {i.name: features[i.name].numpy().astype(np.int64) for i in session.get_inputs()}
    onnx_s = timed(lambda: session.run(None, feed))
    trace = session.end_profiling()
    onnx_kinds: dict[str, float] = collections.Counter()
    onnx_ops: dict[str, float] = collections.Counter()
    for event in json.loads(Path(trace).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            onnx_ops[op] += event["dur"]
            onnx_kinds[kind(op)] += event["dur"]
    os.remove(trace)

    # Multiply-adds of the dense layers (hidden 384, FFN 1536) and attention (QK^T and AV), ×2 FLOP.
    flop = 6 * (2 * length * 384 * (4 * 384 + 2 * 1536) + 2 * 2 * length * length * 384) * batch
    print(f"dense arithmetic: {flop / 1e9:.1f} GFLOP per batch")
    print(f"torch        {batch / torch_s:7.1f} texts/s  {flop / torch_s / 1e9:6.1f} GFLOP/s  {shares(torch_ops)}")
    print(
        f"onnxruntime  {batch / onnx_s:7.1f} texts/s  {flop / onnx_s / 1e9:6.1f} GFLOP/s  {shares(onnx_kinds)}"
        f"  ({torch_s / onnx_s:.2f}x torch)"
    )
    print("onnxruntime operators:", shares(dict(collections.Counter(onnx_ops).most_common(6))))


if __name__ == "__main__":
    main()
