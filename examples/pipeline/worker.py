"""Pipeline stage 2: takes numbers from `tasks`, sends (n, number of divisors of n) to
`results`, until `tasks` is closed and drained. Start as many as you like."""
import subinterp


def divisors(n):
    count = 0
    d = 1
    while d * d <= n:
        if n % d == 0:
            count += 1 if d * d == n else 2
        d += 1
    return count


done = 0
results = subinterp.channel("results")
for n in subinterp.channel("tasks", capacity=100):
    results.send((n, divisors(n), subinterp.id()))
    done += 1
print(f"worker (interpreter {subinterp.id()}): {done} tasks")
