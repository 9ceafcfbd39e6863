"""Throughput of the OTLP receiver: GenAI spans parsed and emitted per second on one core.

Builds OTLP/HTTP protobuf export requests the way the OpenTelemetry SDK's BatchSpanProcessor
sends them (batches of 512 spans), from real SDK spans: chat spans in the current conventions,
half with content captured (``gen_ai.input.messages`` / ``gen_ai.output.messages``, about 1 kB)
and half without, plus one ordinary HTTP span per chat span (counted and skipped). Then times,
pinned to one CPU core, each request through the receiver's handler path: gunzip, decode,
map to an inference event, and ``EventProducer.emit`` into a real Kafka topic, until the
producer has flushed every event to the broker.

Usage::

    .venv/bin/python bench/otlp.py [--spans 20000] [--bootstrap 127.0.0.1:9092] [--core 0]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atalaia.settings import Settings
from otlp import decode
from otlp.assembler import Assembler

BATCH = 512


def build_requests(n_chat: int) -> list[bytes]:
    """gzip'd protobuf ExportTraceServiceRequests holding ``n_chat`` chat spans and as many HTTP spans."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-app"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("bench")
    question = "How many vacation days do I get after three years with the company, and can I carry them over? " * 2
    answer = "Employees have 30 working days of paid vacation a year; up to 5 unused days carry over. " * 4
    for i in range(n_chat):
        with tracer.start_as_current_span("POST /ask"):
            with tracer.start_as_current_span("chat gpt-4o-mini") as span:
                span.set_attribute("gen_ai.operation.name", "chat")
                span.set_attribute("gen_ai.provider.name", "openai")
                span.set_attribute("gen_ai.request.model", "gpt-4o-mini")
                span.set_attribute("gen_ai.response.model", "gpt-4o-mini-2024-07-18")
                span.set_attribute("gen_ai.response.id", f"chatcmpl-{i}")
                span.set_attribute("gen_ai.response.finish_reasons", ["stop"])
                span.set_attribute("gen_ai.usage.input_tokens", 40 + i % 50)
                span.set_attribute("gen_ai.usage.output_tokens", 60 + i % 70)
                span.set_attribute("gen_ai.request.temperature", 0.2)
                span.set_attribute("gen_ai.conversation.id", f"conv-{i % 100}")
                if i % 2 == 0:
                    span.set_attribute(
                        "gen_ai.input.messages",
                        json.dumps([{"role": "user", "parts": [{"type": "text", "content": f"{question} ({i})"}]}]),
                    )
                    span.set_attribute(
                        "gen_ai.output.messages",
                        json.dumps(
                            [
                                {
                                    "role": "assistant",
                                    "parts": [{"type": "text", "content": answer}],
                                    "finish_reason": "stop",
                                }
                            ]
                        ),
                    )
    spans = exporter.get_finished_spans()
    return [gzip.compress(encode_spans(spans[i : i + BATCH]).SerializeToString()) for i in range(0, len(spans), BATCH)]


def main() -> None:
    """Run the benchmark and print the rate."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=20_000, help="chat spans (as many HTTP spans are added)")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--core", type=int, default=0, help="CPU core to pin the process to")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.core})  # one core for everything: decoding, mapping, the Kafka sender thread
    requests = build_requests(args.spans)
    from producers.sdk import EventProducer

    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=home, kafka_bootstrap=args.bootstrap, topic_namespace=f"bench-{uuid.uuid4().hex[:8]}")
        from atalaia.topics import ensure_topics

        ensure_topics(settings)
        producer = EventProducer(settings, client_id="bench-otlp")
        assembler = Assembler(producer.emit, "", settings.price_for, wait_s=0)
        # Warm up the connection (and topic auto-creation) outside the timed part.
        assembler.add_spans(decode.traces_from_protobuf(gzip.decompress(requests[0])).spans[:2], 0)
        producer.flush(60)
        before = assembler.stats.events
        start = time.perf_counter()
        cpu0 = time.process_time()
        for body in requests:
            found = decode.traces_from_protobuf(decode.decompress(body, "gzip"))
            assembler.add_spans(found.spans, found.skipped)
        parsed = time.perf_counter() - start
        producer.flush(120)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        events = assembler.stats.events - before
        stats = producer.stats
        producer.close()
    print(
        f"requests: {len(requests)} of up to {BATCH} spans (gzip protobuf), {args.spans} chat + {args.spans} HTTP spans"
    )
    print(
        f"chat spans -> events: {events}  (sent to Kafka: {stats.sent}, spooled: {stats.spooled}, lost: {stats.lost})"
    )
    print(f"parse + map + emit: {parsed:.2f} s  -> {events / parsed:,.0f} GenAI spans/s")
    print(f"until flushed to Kafka: {elapsed:.2f} s wall -> {events / elapsed:,.0f} GenAI spans/s")
    # On a shared machine the wall clock counts other processes' turns on the core too.
    print(f"CPU time of this process (one core): {cpu:.2f} s -> {events / cpu:,.0f} GenAI spans per CPU-second")


if __name__ == "__main__":
    main()
