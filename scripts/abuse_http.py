#!/usr/bin/env python3
"""Malformed input to both HTTP APIs (scripts/abuse.sh): wrong types, huge numbers, deep
nesting, invalid UTF-8, giant payloads, wrong content types, broken query strings, and slow
clients. Every answer must be a 4xx with a JSON error body that says what is wrong; the services
must keep answering. Prints one JSON line; exits 1 on any other answer."""
import json, select, socket, sys, time

ingest_port, query_port, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
AUTH = {"Authorization": f"Bearer {key}"}
JSON = {"Content-Type": "application/json", **AUTH}
now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
good = {"request_id": "a-1", "tenant_id": "acme", "route": "/chat", "model": "gpt-4o",
        "timestamp": now, "prompt_tokens": 3}


def body(**changes):
    event = dict(good, **changes)
    return json.dumps({k: v for k, v in event.items() if v is not ...}).encode()


INGEST = [
    ("not json", "/v1/llm/request", JSON, b"hello"),
    ("truncated json", "/v1/llm/request", JSON, b'{"request_id": "a'),
    ("invalid utf-8", "/v1/llm/request", JSON, b'{"request_id": "\xff\xfe"}'),
    ("invalid utf-8 in a string", "/v1/llm/request", JSON, body(route="x").replace(b'"x"', b'"\xc3\x28"')),
    ("json null", "/v1/llm/request", JSON, b"null"),
    ("json array on a single endpoint", "/v1/llm/request", JSON, b"[1,2]"),
    ("wrong types", "/v1/llm/request", JSON, body(prompt_tokens="many", route=7, model=[])),
    ("negative tokens", "/v1/llm/request", JSON, body(prompt_tokens=-1)),
    ("huge integer", "/v1/llm/request", JSON, body(prompt_tokens=10**40)),
    ("float overflow", "/v1/llm/request", JSON, body(route="r").replace(b'"prompt_tokens": 3', b'"prompt_tokens": 1e999')),
    ("NaN literal", "/v1/llm/request", JSON, body().replace(b'"prompt_tokens": 3', b'"prompt_tokens": NaN')),
    ("missing fields", "/v1/llm/request", JSON, b"{}"),
    ("timestamp not a time", "/v1/llm/request", JSON, body(timestamp="yesterday")),
    ("timestamp in a year", "/v1/llm/request", JSON, body(timestamp="2999-01-01T00:00:00Z")),
    ("id with spaces", "/v1/llm/request", JSON, body(request_id="a b")),
    ("id of 10k characters", "/v1/llm/request", JSON, body(request_id="x" * 10_000)),
    ("control characters", "/v1/llm/request", JSON, body(route="/a\u0000b")),
    ("deep nesting in metadata", "/v1/llm/request", JSON,
     body().replace(b'"prompt_tokens": 3', b'"prompt_tokens": 3, "metadata": ' + b"[" * 50_000 + b"]" * 50_000)),
    ("giant single body (2 MB)", "/v1/llm/request", JSON, body(route="r" * 2_000_000)),
    ("giant batch (20 MB)", "/v1/llm/batch", JSON, b"[" + b",".join([body(request_id=f"g-{i}", route="r" * 2000) for i in range(10_000)]) + b"]"),
    ("batch not an array", "/v1/llm/batch", JSON, b'{"type": "request"}'),
    ("batch item without type", "/v1/llm/batch", JSON, b"[" + body() + b"]"),
    ("batch of wrong items", "/v1/llm/batch", JSON, b'[1, "two", null, [], {}]'),
    ("ndjson garbage", "/v1/llm/batch", {"Content-Type": "application/x-ndjson", **AUTH}, b"{\n}\n\xff\n"),
    ("response with latency 1e300", "/v1/llm/response", JSON,
     json.dumps({"request_id": "a-1", "timestamp": now, "latency_ms": 1e300, "completion_tokens": 1, "finish_reason": "stop"}).encode()),
    ("wrong content type", "/v1/llm/request", {"Content-Type": "text/plain", **AUTH}, body()),
    ("no content type", "/v1/llm/request", AUTH, body()),
    ("no key", "/v1/llm/request", {"Content-Type": "application/json"}, body()),
    ("another tenant", "/v1/llm/request", JSON, body(tenant_id="someone-else")),
]
QUERY = [
    ("unknown granularity", "/v1/metrics?granularity=7m"),
    ("limit not a number", "/v1/metrics?limit=lots"),
    ("negative limit", "/v1/metrics?limit=-1"),
    ("huge limit", "/v1/metrics?limit=99999999999999999999999"),
    ("from not a time", "/v1/metrics?from=yesterday"),
    ("range backwards", "/v1/metrics?from=2024-02-01T00:00:00Z&to=2024-01-01T00:00:00Z"),
    ("range of centuries", "/v1/summary?from=0001-01-01T00:00:00Z&to=9999-01-01T00:00:00Z"),
    ("bad group_by", "/v1/metrics?group_by=route,route,colour"),
    ("invalid percent-encoding", "/v1/metrics?route=%ZZ%C3%28"),
    ("another tenant", "/v1/metrics?tenant_id=someone-else"),
    ("top not a number", "/v1/summary?top=-"),
    ("unknown path", "/v1/metricz"),
]


def send(port, method, path, headers, data=None):
    """One request on its own connection. The body goes out in pieces while the answer is
    watched for, since a server may answer a giant body (413) before reading it all."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    if data is not None:
        head.append(f"Content-Length: {len(data)}")
    s.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    answer = b""
    view = memoryview(data or b"")
    while view:
        readable, _, _ = select.select([s], [], [], 0)
        if readable:
            break
        try:
            sent = s.send(view[:65536])
        except OSError:
            break
        view = view[sent:]
    while True:
        try:
            chunk = s.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        answer += chunk
    s.close()
    if not answer.startswith(b"HTTP/1.1 "):
        return None, answer
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[-1]


def clear(status, raw):
    """A 4xx whose JSON body names the error and explains it."""
    try:
        b = json.loads(raw)
    except ValueError:
        return False
    return 400 <= status < 500 and isinstance(b.get("error"), str) and isinstance(b.get("message"), str)


def slow_client(port, path, seconds):
    """Sends the headers and then one byte of body a second: the server must give up with an
    answer (or close) on its own, and keep serving others meanwhile."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Authorization: Bearer {key}\r\nContent-Length: 100000\r\n\r\n".encode())
    s.settimeout(1)
    started, answer = time.time(), b""
    while time.time() - started < seconds:
        try:
            s.sendall(b" ")
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
            if b"\r\n\r\n" in answer:
                break
        except socket.timeout:
            continue
        except OSError:
            break
    s.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None
    return status, answer.split(b"\r\n\r\n", 1)[-1], time.time() - started


results, bad = [], []
for name, path, headers, data in INGEST:
    status, raw = send(ingest_port, "POST", path, headers, data)
    results.append(("ingestion", name, status))
    if not clear(status, raw):
        bad.append({"api": "ingestion", "case": name, "status": status, "body": raw[:200].decode("utf-8", "replace")})
for name, path in QUERY:
    status, raw = send(query_port, "GET", path, AUTH)
    results.append(("metrics", name, status))
    if not clear(status, raw):
        bad.append({"api": "metrics", "case": name, "status": status, "body": raw[:200].decode("utf-8", "replace")})
# Not HTTP at all: a header value with control characters. The HTTP layer refuses it before
# any handler runs, with a bare 400: still a 4xx, and the connection is closed.
status, raw = send(ingest_port, "POST", "/v1/llm/request", {"Content-Type": "application/json", "Authorization": "Bearer \x01\x02"}, body())
results.append(("ingestion", "control characters in a header", status))
if status != 400:
    bad.append({"api": "ingestion", "case": "control characters in a header", "status": status})
status, raw, took = slow_client(ingest_port, "/v1/llm/batch", 30)
results.append(("ingestion", "slow client", status))
if not (status is not None and clear(status, raw)):
    bad.append({"api": "ingestion", "case": "slow client", "status": status, "seconds": round(took, 1)})
# Still serving after all of it.
for port, path in ((ingest_port, "/health"), (query_port, "/health")):
    status, _ = send(port, "GET", path, {})
    if status != 200:
        bad.append({"case": f"health on {port} after the abuse", "status": status})
print(json.dumps({"cases": len(results), "statuses": sorted({s for _, _, s in results if s}),
                  "not_clear_4xx": bad}))
sys.exit(1 if bad else 0)
