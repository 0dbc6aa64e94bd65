#!/usr/bin/env python3
"""Watches the services during the end-to-end benchmark (scripts/bench.sh).

Every second: the processor's consumer lag (from its /metrics) and each service's resident
memory. Every quarter second: which one-minute windows of the watched tenant the metrics API
shows, so each full minute under load gets its freshness: seconds from the window's end until
the API first answers with it. Prints one JSON object when the load has ended and the last
window it covers is visible (or a deadline passes).
"""
import json, sys, time, urllib.request
from datetime import datetime, timezone, timedelta

query_url, key, processor_metrics, pids_arg, load_start, load_end = sys.argv[1:7]
pids = dict(p.split("=") for p in pids_arg.split(","))
load_start, load_end = float(load_start), float(load_end)


def get(url, key=None):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(request, timeout=5) as r:
        return r.read().decode()


def lag():
    total = 0
    for line in get(processor_metrics).splitlines():
        if line.startswith("streamlens_processor_consumer_lag{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def iso(ts):
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# Full minutes under load: the first starts after the load did, the last ends before it stops.
first = (int(load_start) // 60 + 1) * 60
minutes = list(range(first, int(load_end) - 59, 60))
visible = {}
samples = []
deadline = load_end + 90
next_sample = 0.0
while time.time() < deadline:
    now = time.time()
    if now >= next_sample:
        next_sample = now + 1
        try:
            sample = {"t": round(now - load_start, 1), "lag": lag()}
        except OSError:
            sample = {"t": round(now - load_start, 1), "lag": None}
        for name, pid in pids.items():
            sample[f"{name}_rss_mib"] = round(rss_mib(pid), 1)
        samples.append(sample)
    pending = [m for m in minutes if m not in visible and m + 60 <= now]
    if pending:
        path = f"/v1/metrics?group_by=tenant&from={iso(pending[0])}&to={iso(pending[-1] + 60)}&limit=1000"
        try:
            body = json.loads(get(query_url + path, key))
            seen = {int(datetime.fromisoformat(m["window_start"].replace("Z", "+00:00")).timestamp()) for m in body["metrics"]}
            for m in pending:
                if m in seen:
                    visible[m] = round(now - (m + 60), 2)
        except OSError:
            pass
    if now > load_end + 5 and len(visible) == len(minutes) and samples and samples[-1]["lag"] == 0:
        break
    time.sleep(0.25)

print(json.dumps({
    "freshness_s": [visible.get(m) for m in minutes],
    "samples": samples,
}))
