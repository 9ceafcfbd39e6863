"""Float32 vs weight-only int8 SmolLM2 on this machine: size, generation speed, holdout perplexity.

Quantizes the prepared model (or ``--model``) with :func:`retrain.quantize.quantize_model`, loads
both through :meth:`atalaia.models.generator.Generator.load` (as the service would) and prints,
side by side:

- size on disk of the model folders;
- generation tokens/s, greedy, exactly ``--new-tokens`` tokens after a holdout question, at 1 and
  2 torch threads: the median of ``--repeats`` runs, the two models alternating run by run so that
  both see the same background load;
- perplexity of the holdout reference answers given their questions (answer tokens, pooled).

The issue's target: int8 at least 2x the float32 tokens/s, perplexity within +5 %.

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
    args = parser.parse_args(argv)

    import torch

    from atalaia.models.generator import Generator
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


if __name__ == "__main__":
    main()
