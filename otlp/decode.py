"""OTLP/HTTP request bodies (protobuf or JSON) to plain spans and log records.

Both encodings decode to the same small structures, so the GenAI mapping
(:mod:`otlp.genai`) never sees the wire format. OTLP/JSON differs from protobuf's canonical JSON
mapping: trace and span ids are hex strings (not base64) and 64-bit integers may be strings, so
JSON is read directly rather than through ``google.protobuf.json_format``.

Only GenAI spans have their attributes converted in full; for the others only the keys are
looked at (a service sends many more HTTP and database spans than model calls).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from atalaia import content_encoding

#: Attribute keys that mark a span as a GenAI operation (current and older conventions).
GENAI_MARKERS = ("gen_ai.operation.name", "gen_ai.system", "gen_ai.provider.name", "llm.request.type")
MAX_BODY_BYTES = content_encoding.MAX_BODY_BYTES


class DecodeError(ValueError):
    """The body is not a valid OTLP export request."""


@dataclass(slots=True)
class SpanEvent:
    """An event recorded on a span (older GenAI conventions put messages here)."""

    name: str
    time_unix_nano: int
    attributes: dict[str, Any]


@dataclass(slots=True)
class Span:
    """The parts of an OTLP span the GenAI mapping reads."""

    trace_id: str  # hex
    span_id: str  # hex
    name: str
    start_unix_nano: int
    end_unix_nano: int
    attributes: dict[str, Any]
    events: list[SpanEvent] = field(default_factory=list)
    status_code: int = 0  # 0 unset, 1 ok, 2 error
    status_message: str = ""
    resource: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class LogRecord:
    """An OTLP log record: GenAI events (per-message events, operation details) arrive as these."""

    event_name: str
    trace_id: str
    span_id: str
    time_unix_nano: int
    attributes: dict[str, Any]
    body: Any
    resource: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Decoded:
    """What one request held: the GenAI spans, and how many spans were not GenAI."""

    spans: list[Span] = field(default_factory=list)
    logs: list[LogRecord] = field(default_factory=list)
    skipped: int = 0


def decompress(body: bytes, encoding: str | None) -> bytes:
    """Undo ``Content-Encoding`` (gzip, deflate or none), refusing bodies over :data:`MAX_BODY_BYTES`."""
    try:
        return content_encoding.decompress(body, encoding, MAX_BODY_BYTES)
    except content_encoding.ContentEncodingError as exc:
        raise DecodeError(str(exc)) from None


# -- protobuf ----------------------------------------------------------------------------------
def _pb_value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        return v.double_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "array_value":
        return [_pb_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _pb_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return bytes(v.bytes_value)
    return None


def _pb_attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _pb_value(kv.value) for kv in kvs}


def _is_genai_keys(keys: Any) -> bool:
    return any(k in GENAI_MARKERS for k in keys)


def traces_from_protobuf(body: bytes) -> Decoded:
    """Decode an ``ExportTraceServiceRequest`` in protobuf."""
    from google.protobuf.message import DecodeError as PbDecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    req = ExportTraceServiceRequest()
    try:
        req.ParseFromString(body)
    except PbDecodeError as exc:
        raise DecodeError(f"body is not an OTLP ExportTraceServiceRequest: {exc}") from None
    out = Decoded()
    for rs in req.resource_spans:
        resource: dict[str, Any] | None = None
        for ss in rs.scope_spans:
            for sp in ss.spans:
                if not _is_genai_keys(kv.key for kv in sp.attributes):
                    out.skipped += 1
                    continue
                if resource is None:
                    resource = _pb_attrs(rs.resource.attributes)
                out.spans.append(
                    Span(
                        trace_id=sp.trace_id.hex(),
                        span_id=sp.span_id.hex(),
                        name=sp.name,
                        start_unix_nano=sp.start_time_unix_nano,
                        end_unix_nano=sp.end_time_unix_nano,
                        attributes=_pb_attrs(sp.attributes),
                        events=[SpanEvent(e.name, e.time_unix_nano, _pb_attrs(e.attributes)) for e in sp.events],
                        status_code=sp.status.code,
                        status_message=sp.status.message,
                        resource=resource,
                    )
                )
    return out


def logs_from_protobuf(body: bytes) -> Decoded:
    """Decode an ``ExportLogsServiceRequest`` in protobuf (GenAI events only are kept)."""
    from google.protobuf.message import DecodeError as PbDecodeError
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    req = ExportLogsServiceRequest()
    try:
        req.ParseFromString(body)
    except PbDecodeError as exc:
        raise DecodeError(f"body is not an OTLP ExportLogsServiceRequest: {exc}") from None
    out = Decoded()
    for rl in req.resource_logs:
        resource: dict[str, Any] | None = None
        for sl in rl.scope_logs:
            for rec in sl.log_records:
                attrs = _pb_attrs(rec.attributes)
                name = rec.event_name or str(attrs.get("event.name", ""))
                if not name.startswith("gen_ai."):
                    out.skipped += 1
                    continue
                if resource is None:
                    resource = _pb_attrs(rl.resource.attributes)
                body_value = _pb_value(rec.body) if rec.HasField("body") else None
                out.logs.append(
                    LogRecord(
                        name,
                        rec.trace_id.hex(),
                        rec.span_id.hex(),
                        rec.time_unix_nano,
                        attrs,
                        body_value,
                        resource,
                    )
                )
    return out


# -- JSON --------------------------------------------------------------------------------------
def _get(d: dict[str, Any], camel: str, snake: str, default: Any = None) -> Any:
    value = d.get(camel)
    return d.get(snake, default) if value is None else value


def _json_value(v: Any) -> Any:
    if not isinstance(v, dict):
        return None
    if "stringValue" in v or "string_value" in v:
        return _get(v, "stringValue", "string_value")
    if "intValue" in v or "int_value" in v:
        return int(_get(v, "intValue", "int_value"))
    if "doubleValue" in v or "double_value" in v:
        return float(_get(v, "doubleValue", "double_value"))
    if "boolValue" in v or "bool_value" in v:
        return bool(_get(v, "boolValue", "bool_value"))
    if "arrayValue" in v or "array_value" in v:
        return [_json_value(x) for x in (_get(v, "arrayValue", "array_value") or {}).get("values", [])]
    if "kvlistValue" in v or "kvlist_value" in v:
        return _json_attrs((_get(v, "kvlistValue", "kvlist_value") or {}).get("values", []))
    if "bytesValue" in v or "bytes_value" in v:
        import base64

        return base64.b64decode(_get(v, "bytesValue", "bytes_value"))
    return None


def _json_attrs(kvs: Any) -> dict[str, Any]:
    if not isinstance(kvs, list):
        return {}
    return {kv["key"]: _json_value(kv.get("value")) for kv in kvs if isinstance(kv, dict) and "key" in kv}


def _hex_id(value: Any) -> str:
    # OTLP/JSON ids are hex; be lenient about case.
    return value.lower() if isinstance(value, str) else ""


def _load_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DecodeError("body must be a JSON object (an OTLP export request)")
    return data


def traces_from_json(body: bytes) -> Decoded:
    """Decode an OTLP/JSON ``ExportTraceServiceRequest``."""
    data = _load_json(body)
    out = Decoded()
    try:
        for rs in _get(data, "resourceSpans", "resource_spans", []):
            resource: dict[str, Any] | None = None
            for ss in _get(rs, "scopeSpans", "scope_spans", []):
                for sp in ss.get("spans", []):
                    raw_attrs = sp.get("attributes", [])
                    if not _is_genai_keys(kv.get("key") for kv in raw_attrs if isinstance(kv, dict)):
                        out.skipped += 1
                        continue
                    if resource is None:
                        resource = _json_attrs((rs.get("resource") or {}).get("attributes", []))
                    status = sp.get("status") or {}
                    code = status.get("code", 0)
                    if isinstance(code, str):  # enum names are valid protobuf JSON too
                        code = {"STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}.get(code, 0)
                    out.spans.append(
                        Span(
                            trace_id=_hex_id(_get(sp, "traceId", "trace_id")),
                            span_id=_hex_id(_get(sp, "spanId", "span_id")),
                            name=str(sp.get("name", "")),
                            start_unix_nano=int(_get(sp, "startTimeUnixNano", "start_time_unix_nano", 0)),
                            end_unix_nano=int(_get(sp, "endTimeUnixNano", "end_time_unix_nano", 0)),
                            attributes=_json_attrs(raw_attrs),
                            events=[
                                SpanEvent(
                                    str(e.get("name", "")),
                                    int(_get(e, "timeUnixNano", "time_unix_nano", 0)),
                                    _json_attrs(e.get("attributes", [])),
                                )
                                for e in sp.get("events", [])
                            ],
                            status_code=int(code),
                            status_message=str(status.get("message", "")),
                            resource=resource,
                        )
                    )
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise DecodeError(f"body is not an OTLP/JSON ExportTraceServiceRequest: {exc}") from None
    return out


def logs_from_json(body: bytes) -> Decoded:
    """Decode an OTLP/JSON ``ExportLogsServiceRequest`` (GenAI events only are kept)."""
    data = _load_json(body)
    out = Decoded()
    try:
        for rl in _get(data, "resourceLogs", "resource_logs", []):
            resource: dict[str, Any] | None = None
            for sl in _get(rl, "scopeLogs", "scope_logs", []):
                for rec in _get(sl, "logRecords", "log_records", []):
                    attrs = _json_attrs(rec.get("attributes", []))
                    name = _get(rec, "eventName", "event_name") or str(attrs.get("event.name", ""))
                    if not name.startswith("gen_ai."):
                        out.skipped += 1
                        continue
                    if resource is None:
                        resource = _json_attrs((rl.get("resource") or {}).get("attributes", []))
                    out.logs.append(
                        LogRecord(
                            name,
                            _hex_id(_get(rec, "traceId", "trace_id")),
                            _hex_id(_get(rec, "spanId", "span_id")),
                            int(_get(rec, "timeUnixNano", "time_unix_nano", 0)),
                            attrs,
                            _json_value(rec.get("body")),
                            resource,
                        )
                    )
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise DecodeError(f"body is not an OTLP/JSON ExportLogsServiceRequest: {exc}") from None
    return out
