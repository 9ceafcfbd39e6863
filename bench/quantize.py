"""Float32 vs weight-only int8 SmolLM2 on this machine: size, generation speed, holdout perplexity.

Quantizes the prepared model (or ``--model``) with :func:`retrain.quantize.quantize_model`, loads
both through :meth:`atalaia.models.generator.Generator.load` (as the service would) and prints,
side by side:

- size on disk of the model folders;
- generation tokens/s, greedy, exactly ``--new-tokens`` tokens after a holdout question, at 1 and
  2 torch threads: the median of ``--repeats`` runs, the two models alternating run by run so that
  both see the same background load;
- perplexity of the holdout reference answers given their questions (answer tokens, pooled);
- the served workload, phase by phase (:mod:`atalaia.models.speed`): prefill ms per prompt token
  on a RAG prompt of served length and decoding tokens/s after it, for float32, int8 and the
  format :func:`retrain.quantize.quantize_for_host` deploys on this host (its rule applied to the
  probe at ``ATALAIA_SPEED_PROBE_THREADS``), medians and ratios of one run, at each thread count.

The CPU's kernel level is printed first. To reproduce an AVX2-only CPU on a bigger one:

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        .venv/bin/python -m bench.quantize [--repeats 5] [--new-tokens 64] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from atalaia.settings import get_settings


def _generate_rate(generator: Any, prompt: dict[str, Any], new_tokens: int) -> float:
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode():
        out = generator.model.generate(
            **prompt,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=generator.eos_token_id,
        )
    elapsed = time.perf_counter() - t0
    assert out.shape[1] - prompt["input_ids"].shape[1] == new_tokens
    return new_tokens / elapsed


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="float model folder (default: the prepared one)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--ppl-items", type=int, default=0, help="holdout items for perplexity (0: all)")
    parser.add_argument(
        "--served-only", action="store_true", help="only the served-workload table (no perplexity, no short prompt)"
    )
    args = parser.parse_args(argv)

    import torch

    from atalaia.models.generator import Generator
    from atalaia.models.speed import cpu_capability
    from retrain.dataset import load_qa
    from retrain.evaluate import answer_perplexities
    from retrain.quantize import dir_size, quantize_model
    from retrain.train import user_messages

    settings = get_settings()
    fp32_dir = args.model or settings.generator_path
    assert settings.qa_holdout_file is not None
    holdout = load_qa(settings.qa_holdout_file)
    with tempfile.TemporaryDirectory(prefix="atalaia-bench-quant-") as tmp:
        t0 = time.perf_counter()
        quantized = quantize_model(fp32_dir, Path(tmp) / "int8")
        quant_s = time.perf_counter() - t0
        loaded: dict[str, Any] = {}
        load_s: dict[str, float] = {}
        for name, path in (("fp32", fp32_dir), ("int8", quantized.path)):
            t0 = time.perf_counter()
            loaded[name] = Generator.load(path)
            load_s[name] = time.perf_counter() - t0
        sizes = {"fp32": dir_size(fp32_dir), "int8": quantized.size_bytes}

        print(f"\nCPU: {cpu_capability()}", flush=True)
        _served_workload(loaded, settings, args.repeats, [int(t) for t in args.threads.split(",") if t])
        if args.served_only:
            return

        items = holdout[: args.ppl_items] if args.ppl_items else holdout
        prompts = [user_messages(i.question) for i in items]
        ppl = {
            name: answer_perplexities(gen.model, gen.tokenizer, prompts, [i.answer for i in items])[0]
            for name, gen in loaded.items()
        }

        prompt = loaded["fp32"]._encode(user_messages(holdout[0].question))
        rates: dict[tuple[str, int], list[float]] = {}
        threads = [int(t) for t in args.threads.split(",") if t.strip()]
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            for _name, gen in loaded.items():  # warm-up: first calls allocate caches
                _generate_rate(gen, prompt, 8)
            for rep in range(args.repeats):
                order = list(loaded.items()) if rep % 2 == 0 else list(loaded.items())[::-1]
                for name, gen in order:
                    rates.setdefault((name, n_threads), []).append(_generate_rate(gen, prompt, args.new_tokens))

    print(f"\nfloat32 vs {quantized.method} ({fp32_dir.name}), {len(items)} holdout answers for perplexity")
    print(f"quantization took {quant_s:.1f} s; load: fp32 {load_s['fp32']:.2f} s, int8 {load_s['int8']:.2f} s\n")
    header = f"{'':>24} {'fp32':>10} {'int8':>10} {'int8/fp32':>10}"
    print(header)
    print("-" * len(header))
    mb = {k: v / 1e6 for k, v in sizes.items()}
    print(f"{'size (MB)':>24} {mb['fp32']:>10.1f} {mb['int8']:>10.1f} {mb['int8'] / mb['fp32']:>10.2f}")
    for n_threads in threads:
        f, q = statistics.median(rates[("fp32", n_threads)]), statistics.median(rates[("int8", n_threads)])
        print(f"{f'tokens/s, {n_threads} thread(s)':>24} {f:>10.1f} {q:>10.1f} {q / f:>10.2f}")
    print(f"{'holdout perplexity':>24} {ppl['fp32']:>10.3f} {ppl['int8']:>10.3f} {ppl['int8'] / ppl['fp32']:>10.3f}")
    print(f"\n(tokens/s: median of {args.repeats} runs of {args.new_tokens} greedy tokens; all runs: ", end="")
    print({f"{k[0]}@{k[1]}": [round(r, 1) for r in v] for k, v in rates.items()}, ")")


def _served_workload(loaded: dict[str, Any], settings: Any, repeats: int, threads: list[int]) -> dict[int, Any]:
    """Probe float32 and int8 on the served workload at each thread count; print the table at once."""
    import torch

    from atalaia.models.speed import compare_speed, probe_messages, slowdown_reasons, speed_ratios

    served = probe_messages(settings)
    served_speed: dict[int, dict[str, Any]] = {}
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        reports = compare_speed(loaded, served, repeats=repeats, decode_tokens=settings.speed_probe_decode_tokens)
        served_speed[n_threads] = {"reports": reports, "ratios": speed_ratios(reports["int8"], reports["fp32"])}
    # The rule of retrain.quantize.quantize_for_host, on the probe at ATALAIA_SPEED_PROBE_THREADS.
    decide_at = settings.speed_probe_threads if settings.speed_probe_threads in served_speed else threads[0]
    limit = settings.quantized_max_slowdown
    slower = slowdown_reasons(served_speed[decide_at]["ratios"], max_prefill=limit, max_decode=limit, what="int8")
    deployed = "fp32" if slower else "int8"

    n_prompt = served_speed[threads[0]]["reports"]["fp32"].prompt_tokens
    print(f"\nserved workload: RAG prompt of {n_prompt} tokens, {settings.speed_probe_decode_tokens} decoded tokens")
    print(f"deployed on this host: {deployed} ({'; '.join(slower) or 'int8 no slower in either phase'},")
    print(f"  judged on the best of {repeats} runs at {decide_at} thread(s), limit {limit:.2f}x)\n")
    head = f"{'median of runs':>30} {'fp32':>8} {'int8':>8} {'int8/fp32':>10} {'deployed':>9} {'dep/fp32':>9}"
    print(head)
    print("-" * len(head))
    for n_threads, data in served_speed.items():
        reports = data["reports"]
        rows = (
            (f"prefill ms/token, {n_threads} thr", "prefill_ms_per_token", False),
            (f"decode tokens/s, {n_threads} thr", "decode_tokens_per_s", True),
        )
        for label, attr, higher in rows:
            f32, i8 = getattr(reports["fp32"], attr), getattr(reports["int8"], attr)
            dep = i8 if deployed == "int8" else f32
            # Ratios read "times the float32 speed" (> 1: faster) for both phases.
            r8, rd = (i8 / f32, dep / f32) if higher else (f32 / i8, f32 / dep)
            print(f"{label:>30} {f32:>8.2f} {i8:>8.2f} {r8:>10.2f} {dep:>9.2f} {rd:>9.2f}")
    print("(ratio columns: speed relative to float32, > 1 is faster; prefill time per token inverted)")
    runs = {t: {n: r.samples for n, r in d["reports"].items()} for t, d in served_speed.items()}
    print(f"(all runs, threads -> model -> [(prefill ms/token, decode tokens/s)]: {runs})", flush=True)
    return served_speed


if __name__ == "__main__":
    main()
