"""Base vs retrained SmolLM2 on the holdout, with and without RAG, on this machine.

One retraining pass as a run does it, minus the database and Kafka: build the data set (curated
QA pairs and handbook-derived pairs; the bench's own empty database has no feedback), fine-tune
LoRA with the settings' hyper-parameters (``--steps`` overrides), merge, quantize to int8, then
score the base model (float32, as prepared) and the retrained int8 model on the first
``--limit`` holdout questions, each with and without retrieval. Prints the table and the time of
each phase. The holdout asks about facts of the handbook that no base model can know and that the
curated training questions do not ask about.

    .venv/bin/python -m bench.retrain [--steps 60] [--limit 24] [--threads 0] [--keep DIR [--reuse]]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from atalaia.settings import get_settings


def _reused(root: Path) -> tuple[Any, Any, Any]:
    """The training result, quantized model and configuration of a run kept in ``root``."""
    import json

    from atalaia.models.quantized import read_quant_manifest
    from retrain.quantize import QuantizedModel, dir_size
    from retrain.train import LoraConfig, TrainResult

    info = json.loads((root / "run" / "train.json").read_text(encoding="utf-8"))
    losses = [float(line.split(",")[1]) for line in (root / "run" / "loss_curve.csv").read_text().splitlines()[1:]]
    fields = {k: v for k, v in info.items() if k in TrainResult.__dataclass_fields__}
    paths = ("adapter_dir", "merged_dir", "loss_curve_path")
    trained = TrainResult(**{**fields, **{k: Path(fields[k]) for k in paths}, "losses": losses})
    config = LoraConfig(**{**info["config"], "target_modules": tuple(info["config"]["target_modules"])})
    int8 = root / "int8"
    quantized = QuantizedModel(int8, read_quant_manifest(int8)["method"], dir_size(int8))
    return trained, quantized, config


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=0, help="LoRA steps (0: ATALAIA_LORA_STEPS)")
    parser.add_argument("--limit", type=int, default=24, help="holdout questions scored per model and mode")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for training (0: torch default)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folder here instead of a temp dir")
    parser.add_argument(
        "--reuse", action="store_true", help="with --keep: score the run already in that folder (no training)"
    )
    args = parser.parse_args(argv)

    from sqlalchemy import create_engine

    from atalaia.storage.tables import metadata
    from retrain.dataset import build_dataset
    from retrain.evaluate import EvalResources, evaluate_model, load_holdout
    from retrain.quantize import dir_size, quantize_model
    from retrain.train import LoraConfig, train_lora

    settings = get_settings()
    holdout = load_holdout(settings)
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="atalaia-bench-retrain-") as tmpdir:
        root = args.keep or Path(tmpdir)
        root.mkdir(parents=True, exist_ok=True)
        engine = create_engine(f"sqlite:///{root / 'bench.db'}")
        metadata.create_all(engine)

        t0 = time.perf_counter()
        dataset = build_dataset(engine, settings, root / "datasets")
        times["dataset"] = time.perf_counter() - t0

        overrides: dict[str, Any] = {"steps": args.steps} if args.steps else {}
        config = LoraConfig.from_settings(settings, **overrides)
        if args.reuse and args.keep:
            trained, quantized, config = _reused(root)
            times["train + merge (earlier run)"] = trained.seconds
        else:
            t0 = time.perf_counter()
            trained = train_lora(settings.generator_path, dataset, root / "run", config, threads=args.threads)
            times["train + merge"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            quantized = quantize_model(trained.merged_dir, root / "int8")
            times["quantize"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        resources = EvalResources.load(settings, rag=True)
        times["load embedder + index"] = time.perf_counter() - t0
        reports: dict[tuple[str, bool], Any] = {}
        for name, path in (("base fp32", settings.generator_path), ("retrained int8", quantized.path)):
            for rag in (False, True):
                t0 = time.perf_counter()
                reports[(name, rag)] = evaluate_model(
                    path, holdout, rag=rag, settings=settings, limit=args.limit, resources=resources, progress=True
                )
                times[f"evaluate {name}, {'RAG' if rag else 'no RAG'}"] = time.perf_counter() - t0
        merged_mb, int8_mb = dir_size(trained.merged_dir) / 1e6, quantized.size_bytes / 1e6

    print(
        f"\ndata set {dataset.content_hash[:12]}: {dataset.n_train} train / {dataset.n_val} val "
        f"(QA {dataset.n_qa}, handbook {dataset.n_regulations}, feedback {dataset.n_feedback})"
    )
    print(
        f"LoRA r={config.rank} alpha={config.alpha} on {','.join(config.target_modules)}; {trained.steps} steps of "
        f"{config.batch_size}, lr {config.lr}, seq {config.max_seq_len}, on {trained.device} ({trained.dtype}): "
        f"{trained.seconds:.0f} s ({trained.seconds / trained.steps:.1f} s/step incl. load, merge, save)"
    )
    first, last = sum(trained.losses[:5]) / 5, sum(trained.losses[-5:]) / 5
    print(
        f"training loss (mean of 5 steps) {first:.3f} -> {last:.3f}; validation loss "
        f"{trained.val_loss_before:.3f} -> {trained.val_loss_after:.3f}"
    )
    print(f"merged {merged_mb:.0f} MB, int8 {int8_mb:.0f} MB\n")
    header = f"{'model':<16} {'RAG':<4} {'ROUGE-L':>8} {'similarity':>10} {'ref. ppl':>9} {'p50 ms':>8} {'tok/s':>6}"
    print(f"holdout, first {args.limit} questions, greedy, {settings.eval_max_tokens} tokens max")
    print(header)
    print("-" * len(header))
    for (name, rag), r in reports.items():
        print(
            f"{name:<16} {'yes' if rag else 'no':<4} {r.rouge_l:>8.4f} {r.similarity:>10.4f} {r.perplexity:>9.2f} "
            f"{r.latency_p50_ms:>8.0f} {r.tokens_per_s:>6.1f}"
        )
    for rag in (False, True):
        base, new = reports[("base fp32", rag)], reports[("retrained int8", rag)]
        print(f"ROUGE-L gain {'with' if rag else 'without'} RAG: {new.rouge_l - base.rouge_l:+.4f}")
    print("\nphase times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    print(f"total {sum(times.values()):.0f} s")
    example = reports[("retrained int8", False)].per_item[0]
    print(f"\nexample (no RAG): Q: {example['question']}\n  reference: {example['reference']}")
    print(f"  base:      {reports[('base fp32', False)].per_item[0]['prediction']}")
    print(f"  retrained: {example['prediction']}")


if __name__ == "__main__":
    main()
