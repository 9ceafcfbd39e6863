"""OTLP/HTTP receiver: OpenTelemetry GenAI spans to inference events (`atalaia otlp`)."""
