#!/usr/bin/env python3
"""Lines up the hop timestamps of serial writes (adapter-k8s/src/hop.rs) from a replication bench
run's kept logs:

    BENCH_LOG=base_hop=trace BENCH_CLIENTS=1 BENCH_SYSTEMS=base cargo bench -p base-adapter-k8s \
        --bench replication        # prints "logs kept in DIR"
    scripts/hops.py DIR

Each write starts at a `gw.in`; for every hop (process and name) the median and p90 of its
first time after that start, and how many times it happens per write (wake-ups). Serial runs
only: with concurrent clients the windows overlap."""
import glob, os, re, statistics, sys

ansi = re.compile(r'\x1b\[[0-9;]*m')
pat = re.compile(r'us[=":]+(\d+).*?index[=":]+(\d+).*?hop[=":]+"?([a-z_.]+)')
events = []
for path in glob.glob(os.path.join(sys.argv[1], '**', '*.log'), recursive=True):
    who = os.path.relpath(path, sys.argv[1]).replace('.log', '')
    for line in open(path, errors='replace'):
        if 'base_hop' not in line:
            continue
        m = pat.search(ansi.sub('', line))
        if m:
            events.append((int(m.group(1)), who, m.group(3), int(m.group(2))))
events.sort()
starts = [e[0] for e in events if e[2] == 'gw.in']
if len(starts) < 3:
    sys.exit('fewer than three writes traced')
# Skip the first writes (connections opening) and the last (cut off).
windows = list(zip(starts[5:-2], starts[6:-1]))
first, count = {}, {}
i = 0
for lo, hi in windows:
    while i < len(events) and events[i][0] < lo:
        i += 1
    j, seen = i, set()
    while j < len(events) and events[j][0] < hi:
        t, who, hop, _ = events[j]
        key = (who, hop)
        count[key] = count.get(key, 0) + 1
        if key not in seen:
            seen.add(key)
            first.setdefault(key, []).append(t - lo)
        j += 1
n = len(windows)
total = statistics.median(hi - lo for lo, hi in windows)
print(f'{n} writes, median {total / 1000:.2f} ms from one gw.in to the next')
rows = sorted(first.items(), key=lambda kv: statistics.median(kv[1]))
prev = 0.0
for (who, hop), ts in rows:
    med = statistics.median(ts) / 1000
    p90 = sorted(ts)[int(len(ts) * 0.9)] / 1000
    print(f'{who:<14} {hop:<28} median {med:7.3f} ms (+{med - prev:6.3f})  p90 {p90:7.3f}  '
          f'per write {count[(who, hop)] / n:4.2f}')
    prev = med
