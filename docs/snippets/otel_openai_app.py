"""An app on the official `openai` client, instrumented with OpenTelemetry, monitored by Atalaia.

pip install openai opentelemetry-sdk opentelemetry-exporter-otlp-proto-http opentelemetry-instrumentation-openai-v2
Environment: OPENAI_BASE_URL / OPENAI_API_KEY as usual (OpenAI, Gemini's or Mistral's
OpenAI-compatible endpoint, vLLM, ...); OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318
(`atalaia otlp`); OTEL_SERVICE_NAME=my-app; optionally
OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=SPAN_ONLY to send prompts and answers too.
"""

import os

from openai import OpenAI
from opentelemetry import _logs, trace
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

# Spans (and, with EVENT_ONLY content capture, log records) go to Atalaia's OTLP receiver.
trace.set_tracer_provider(TracerProvider())
trace.get_tracer_provider().add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
_logs.set_logger_provider(LoggerProvider())
_logs.get_logger_provider().add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
OpenAIInstrumentor().instrument()

client = OpenAI()
model = os.environ.get("MODEL", "gpt-4o-mini")
answer = client.chat.completions.create(
    model=model, max_tokens=16, messages=[{"role": "user", "content": "How many vacation days do I get?"}]
)
print(answer.choices[0].message.content)
stream = client.chat.completions.create(
    model=model, max_tokens=16, stream=True, messages=[{"role": "user", "content": "Who approves travel?"}]
)
print("".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices))

# A short-lived script must flush before it exits; a long-running service need not.
trace.get_tracer_provider().shutdown()
_logs.get_logger_provider().shutdown()
