"""Throughput of each metric group and of the full set, one worker process, this machine.

Scores synthetic inference events (regulations-style questions of ~15 tokens, answers of 40-60
words (~55-80 tokens), a paraphrased reference and two retrieved passages each) with
:class:`consumers.scoring.BatchScorer`, one group at a time and then all together, and reports
events/s (median of ``--repeats`` runs) and CPU seconds per event (process CPU time, all threads,
median of the runs: on a shared machine the CPU an event costs is steadier than the wall clock,
and it is what sizing needs). ``embedding`` runs on the configured backend
(``ATALAIA_EMBEDDER_BACKEND``; ONNX Runtime when exported, ``--onnx-home`` or a temporary export
otherwise) and ``embedding-torch`` on torch, side by side. Also the time of one drift test on 1,000 × 384 windows
and the peak memory (VmHWM) of the process with every model loaded. Usage::

    .venv/bin/python bench/metrics.py [--events 400] [--repeats 3] [--groups operational,text,...]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _events(n: int) -> list:  # type: ignore[type-arg]
    from atalaia.events import ChatMessage, InferenceEvent, RetrievedPassage
    from atalaia.settings import get_settings

    # The served base version: perplexity is scored under the version that produced an answer,
    # and a version Atalaia does not host gets none (a bench of it would time nothing).
    version = get_settings().model_version

    topics = ["vacation", "expenses", "remote work", "travel", "security", "data retention", "gifts", "notice"]
    words = (
        "employees must submit the request through the portal at least ten working days before the date "
        "and their manager approves it within three days unless the policy on {} says otherwise for the "
        "case of contractors interns and staff on probation"
    ).split()
    out = []
    for i, topic in zip(range(n), itertools.cycle(topics), strict=False):
        answer = " ".join(words[: 40 + i % 20]).format(topic)
        out.append(
            InferenceEvent(
                service="bench",
                model_version=version,
                messages=[ChatMessage(role="user", content=f"What does the policy say about {topic}? (case {i})")],
                response=answer,
                reference=answer[::-1] if i % 3 == 0 else answer.replace("ten", "five"),
                context=[
                    RetrievedPassage(id=f"{topic}-1", text=f"The {topic} policy: {answer[:120]}"),
                    RetrievedPassage(id=f"{topic}-2", text=f"Exceptions to the {topic} policy are rare."),
                ],
                latency_ms=100.0 + i,
                prompt_tokens=30,
                completion_tokens=60,
                cost=0.0,
            )
        )
    return out


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--groups",
        default="operational,text,meteor,embedding,embedding-torch,toxicity,perplexity,all",
        help="rows to measure (comma-separated)",
    )
    parser.add_argument("--onnx-home", type=Path, default=None, help="ATALAIA_HOME with the ONNX embedder export")
    args = parser.parse_args()

    import numpy as np

    from atalaia.drift.mmd import MMDDriftDetector, mmd2
    from atalaia.logs import configure_logging
    from atalaia.metrics.embedding import Embedder
    from atalaia.models.embedder import load_embedder
    from atalaia.models.embedder_onnx import export_embedder_onnx, export_ready, onnx_dir
    from atalaia.models.prepare import locate_embedder
    from atalaia.settings import Settings
    from consumers.scoring import BatchScorer

    configure_logging("WARNING", json_lines=False)
    base = Settings()
    print(f"# metric throughput ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, one process)")
    events = _events(args.events)
    embedder_settings = base
    if not export_ready(onnx_dir(base)) and base.embedder_backend != "torch":
        import tempfile

        home = args.onnx_home or Path(tempfile.mkdtemp(prefix="atalaia-bench-onnx-"))
        export_embedder_onnx(locate_embedder(), onnx_dir(Settings(home=home)))
        embedder_settings = base.model_copy(update={"models_dir": onnx_dir(Settings(home=home)).parent})
    torch_embedder = Embedder(load_embedder(base.model_copy(update={"embedder_backend": "torch"})))
    full = BatchScorer(base, embedder=Embedder(load_embedder(embedder_settings)))
    t0 = time.perf_counter()
    full.warm_up()
    print(f"models loaded in {time.perf_counter() - t0:.1f} s; peak RSS so far {_peak_rss_mb():.0f} MB")
    print(f"embedder: {type(full.embedder.model).__name__} ({base.embedder_backend})")
    print(f"peak RSS with the models loaded: {_peak_rss_mb():.0f} MB")
    print(f"\n{'group':16s} {'events/s':>10s} {'CPU s/event':>12s} {'events/s/core':>14s}  (median of {args.repeats})")
    for group in args.groups.split(","):
        groups = "operational,text,embedding,toxicity,perplexity" if group == "all" else group
        groups = "embedding" if group == "embedding-torch" else groups
        scorer = BatchScorer(
            base.model_copy(update={"metric_groups": groups}),
            embedder=torch_embedder if group == "embedding-torch" else full.embedder,
            toxicity=full.toxicity,
            text=full.text,
            perplexity=full.perplexity,
        )
        sample = events if group not in ("perplexity", "all") else events[: max(40, args.events // 5)]
        rates, cpu = [], []
        for _ in range(args.repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            for i in range(0, len(sample), 200):
                scorer.score(sample[i : i + 200])
            rates.append(len(sample) / (time.perf_counter() - start))
            cpu.append((time.process_time() - start_cpu) / len(sample))
        per_event = statistics.median(cpu)
        print(f"{group:16s} {statistics.median(rates):10.1f} {per_event:12.6f} {1 / per_event:14.1f}", flush=True)
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(1000, 384)).astype(np.float32)
    win = rng.normal(size=(1000, 384)).astype(np.float32)
    det = MMDDriftDetector(reference=ref, window_size=998, stride=50)  # calibration fixes the bandwidth
    times = []
    for _ in range(5):
        start = time.perf_counter()
        mmd2(win, ref, bandwidth=det.bandwidth)
        times.append(time.perf_counter() - start)
    median_ms = statistics.median(times) * 1000
    print(f"\ndrift test, 1,000 x 384 window vs 1,000 x 384 reference: {median_ms:.0f} ms (median of 5)")
    print(f"peak RSS with all models loaded and scoring: {_peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
