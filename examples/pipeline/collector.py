"""Pipeline stage 3: collects every result and prints a summary."""
import collections
import subinterp

expected = subinterp.channel("control").recv()
results = subinterp.channel("results")
best = (0, 0)
per_worker = collections.Counter()
for _ in range(expected):
    n, count, worker = results.recv(timeout=60)
    best = max(best, (count, n))
    per_worker[worker] += 1
print(f"collector (interpreter {subinterp.id()}): {expected} results from "
      f"{len(per_worker)} workers; {best[1]} has the most divisors ({best[0]})")
