#!/usr/bin/env python3
"""GenAI spans exported by the stock OpenTelemetry Python SDK and its OTLP exporter (HTTP or
gRPC), built to known totals (streamlens-loadgen otel runs it and checks what StreamLens stored).

    otel_export.py http|grpc ENDPOINT KEY CALLS

The exporter is given nothing but its endpoint and headers, as an application's would. Prints
one JSON object: the windows the spans must produce, keyed "route|model|minute"; the routes
and the service name carry the protocol, so that the two runs' windows stay apart."""
import json, random, sys, time

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode

protocol, endpoint, key, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if protocol == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True,
                                headers=(("authorization", f"Bearer {key}"),))
else:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    exporter = OTLPSpanExporter(endpoint=endpoint, headers={"Authorization": f"Bearer {key}"})
service = f"otel-support-bot-{protocol}"
provider = TracerProvider(resource=Resource.create({"service.name": service}))
provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=64))
tracer = provider.get_tracer("streamlens.check")

rng = random.Random(7 if protocol == "http" else 11)
now_ns = time.time_ns()
# Calls spread over the three minutes before the last whole one, so every window closes soon.
minute_ns = 60 * 10**9
first = (now_ns // minute_ns - 4) * minute_ns
windows = {}
# In time order, as an application exports its spans: a call's two halves are stamped at its
# start and its end, and the processor joins what arrives within its join TTL of the newest.
starts = sorted(first + rng.randrange(3 * minute_ns) for _ in range(calls))
for i, start in enumerate(starts):
    model = ["gpt-4o", "claude-sonnet-4"][i % 2]
    vendor = "openai" if model.startswith("gpt") else "anthropic"
    route = f"/otel-chat-{protocol}" if i % 3 else None  # else the service name
    latency_ms = rng.randrange(50, 5000)
    input_tokens, output_tokens = rng.randrange(1, 4000), rng.randrange(1, 800)
    # Cache reads and writes are parts of the input, reasoning part of the output.
    cache_read = rng.randrange(input_tokens) if i % 2 else 0
    cache_write = rng.randrange(input_tokens - cache_read + 1) if i % 4 == 1 else 0
    reasoning = rng.randrange(output_tokens + 1) if i % 3 == 0 else 0
    # A type on the span, a type without an error status, or an error status alone (_OTHER).
    error_type = "rate_limit_exceeded" if i % 17 == 0 else "timeout" if i % 19 == 0 else None
    status_only = error_type is None and i % 13 == 0
    with tracer.start_as_current_span("agent turn", start_time=start, end_on_exit=False) as parent:
        # A span that is no model call: skipped, never counted.
        parent.end(end_time=start + 1)
        span = tracer.start_span(f"chat {model}", start_time=start)
        span.set_attribute("gen_ai.operation.name", "chat")
        if i % 11:  # else no provider named
            # The current name, or the legacy one older instrumentations send.
            span.set_attribute("gen_ai.system" if i % 5 == 0 else "gen_ai.provider.name", vendor)
        span.set_attribute("gen_ai.request.model", model)
        span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
        if cache_read:
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", cache_read)
        if cache_write:
            span.set_attribute("gen_ai.usage.cache_creation.input_tokens", cache_write)
        if reasoning:
            span.set_attribute("gen_ai.usage.reasoning.output_tokens", reasoning)
        span.set_attribute("gen_ai.response.finish_reasons", ["stop"])
        if route:
            span.set_attribute("streamlens.route", route)
        if error_type:
            span.set_attribute("error.type", error_type)
        if error_type == "rate_limit_exceeded" or status_only:
            span.set_status(Status(StatusCode.ERROR, "429 from the provider"))
        span.end(end_time=start + latency_ms * 10**6)
    window = windows.setdefault(
        f"{route or service}|{model}|{start // minute_ns * 60}",
        {"requests": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0,
         "cached_prompt_tokens": 0, "cache_creation_tokens": 0, "reasoning_tokens": 0,
         "providers": {}, "error_types": {}},
    )
    window["requests"] += 1
    window["prompt_tokens"] += input_tokens
    window["completion_tokens"] += output_tokens
    window["cached_prompt_tokens"] += cache_read
    window["cache_creation_tokens"] += cache_write
    window["reasoning_tokens"] += reasoning
    if i % 11:
        window["providers"][vendor] = window["providers"].get(vendor, 0) + 1
    if error_type or status_only:
        window["errors"] += 1
        kind = error_type or "_OTHER"
        window["error_types"][kind] = window["error_types"].get(kind, 0) + 1

provider.force_flush()
provider.shutdown()
print(json.dumps({"calls": calls, "windows": windows}))
