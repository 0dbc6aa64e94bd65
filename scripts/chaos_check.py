#!/usr/bin/env python3
"""Compares what StreamLens stored with what the oracle stream must give (scripts/chaos.sh).

Waits until every stored window holds what the oracle expects (or a deadline passes: a
total that matches is not enough, one window's surplus can hide another's pending
timeout), then compares every window: counts and sums exactly, p95 within the histogram's error bound
(2 significant digits: under 1%, plus the 1 ms unit). Then the last record of every window on
the metrics topic must equal the stored row. Prints one JSON line; exits 1 on any difference.
"""
import json, math, subprocess, sys, time

oracle_path, dsn, loadgen, brokers, metrics_topic, wait_secs = sys.argv[1:7]
oracle = json.load(open(oracle_path))
FIELDS = ["requests", "errors", "timeouts", "completed", "latency_sum_ms", "prompt_tokens", "completion_tokens"]
SQL = """SELECT COALESCE(json_agg(t), '[]') FROM (SELECT tenant_id, route, model,
  to_char(window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS window_start,
  requests, errors, timeouts, completed, latency_sum_ms, prompt_tokens, completion_tokens,
  p95_latency_ms FROM llm_metrics) t"""


def stored():
    out = subprocess.run(["psql", dsn, "-tAc", SQL], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return {(r["tenant_id"], r["route"], r["model"], r["window_start"]): r for r in json.loads(out.stdout)}


def key(r):
    return (r["tenant_id"], r["route"], r["model"], r["window_start"])


expected = {key(w): w for w in oracle["windows"]}
want = sum(w["requests"] for w in expected.values())


def settled(rows):
    return rows.keys() == expected.keys() and all(
        rows[k][f] == e[f] for k, e in expected.items() for f in FIELDS)


deadline = time.time() + float(wait_secs)
rows = None
while time.time() < deadline:
    rows = stored()
    if rows is not None and settled(rows):
        break
    time.sleep(1)
rows = rows or {}

report = {"windows": len(expected), "requests_expected": want,
          "requests_stored": sum(r["requests"] for r in rows.values())}
wrong, lost, extra = [], 0, 0
for k, e in expected.items():
    r = rows.get(k)
    if r is None:
        wrong.append({"window": k, "missing": True})
        lost += e["requests"]
        continue
    diff = {f: (e[f], r[f]) for f in FIELDS if e[f] != r[f]}
    lost += max(0, e["requests"] - r["requests"])
    extra += max(0, r["requests"] - e["requests"])
    if e["p95_latency_ms"] is not None:
        bound = e["p95_latency_ms"] * 0.01 + 1
        if abs(r["p95_latency_ms"] - e["p95_latency_ms"]) > bound:
            diff["p95_latency_ms"] = (e["p95_latency_ms"], r["p95_latency_ms"])
    if diff:
        wrong.append({"window": k, "expected_vs_stored": diff})
for k, r in rows.items():
    if k not in expected:
        wrong.append({"window": k, "unexpected": True})
        extra += r["requests"]
report.update({"windows_exact": len(expected) - sum(1 for w in wrong if "unexpected" not in w),
               "requests_lost": lost, "requests_counted_twice": extra})

# The metrics topic: the last record of each window equals the stored row, once it caught up.
topic_wrong = []
for _ in range(30):
    out = subprocess.run([loadgen, "latest", "--brokers", brokers, "--topic", metrics_topic],
                         capture_output=True, text=True)
    latest = {key(r): r for r in json.loads(out.stdout)} if out.returncode == 0 else {}
    topic_wrong = [k for k, r in rows.items()
                   if k not in latest or any(latest[k][f] != r[f] for f in ("requests", "errors", "timeouts", "prompt_tokens", "completion_tokens"))]
    if not topic_wrong:
        break
    time.sleep(2)
report["metrics_topic_windows_equal"] = len(rows) - len(topic_wrong)
report["ok"] = not wrong and not topic_wrong and report["windows_exact"] == len(expected)
if wrong:
    report["first_differences"] = wrong[:5]
if topic_wrong:
    report["metrics_topic_differs"] = topic_wrong[:5]
print(json.dumps(report))
sys.exit(0 if report["ok"] else 1)
