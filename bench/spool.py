"""Spool replay cost: the segment files and read offset vs the old whole-file rewrite.

A backlog of ``--backlog`` spooled events (about 400 bytes each, an inference event's size) is
replayed in chunks of 1,000 as the SDK does: read a chunk, then remove it once acknowledged. The
old spool (``--old``: a copy of the previous ``producers/spool.py``) re-read and rewrote the whole
file per chunk (O(backlog) per chunk, O(backlog^2) per replay); the new one reads the chunk and
writes an offset (O(chunk)). Prints seconds per replay, bytes written and the slowest chunk.
Usage::

    .venv/bin/python bench/spool.py [--backlog 50000] [--old /path/to/old_spool.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from producers import spool as new_spool

CHUNK = 1_000


def _load(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("old_spool", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_spool"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _disk_writes() -> int:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def replay(module: Any, backlog: int) -> dict[str, float]:
    """Fill a spool with ``backlog`` messages, then drain it chunk by chunk; the timings."""
    folder = Path(tempfile.mkdtemp(prefix="bench-spool-"))
    spool = module.Spool(folder / "s.jsonl")
    value = b"x" * 300
    for start in range(0, backlog, 5_000):
        spool.append_many([module.SpooledMessage("t", b"k", value) for _ in range(min(5_000, backlog - start))])
    chunks: list[float] = []
    written = _disk_writes()
    begin = time.perf_counter()
    while len(spool):
        t0 = time.perf_counter()
        got = spool.read(limit=CHUNK)
        spool.remove(range(len(got)))
        chunks.append(time.perf_counter() - t0)
    total = time.perf_counter() - begin
    return {
        "seconds": total,
        "median_chunk_ms": statistics.median(chunks) * 1000,
        "slowest_chunk_ms": max(chunks) * 1000,
        "written_mb": (_disk_writes() - written) / 1e6,
    }


def main() -> None:
    """Run old and new side by side and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backlog", type=int, default=50_000)
    ap.add_argument("--old", type=Path, help="a copy of the previous producers/spool.py")
    args = ap.parse_args()
    rows = [("new (segments + offset)", replay(new_spool, args.backlog))]
    if args.old:
        rows.insert(0, ("old (whole-file rewrite)", replay(_load(args.old), args.backlog)))
    print(f"backlog {args.backlog} events, chunks of {CHUNK}")
    print("| spool | replay s | median chunk ms | slowest chunk ms | MB written |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        print(
            f"| {name} | {r['seconds']:.2f} | {r['median_chunk_ms']:.1f} | {r['slowest_chunk_ms']:.1f} "
            f"| {r['written_mb']:.1f} |"
        )


if __name__ == "__main__":
    main()
