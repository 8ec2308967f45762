"""Pipeline stage 1: puts work on the `tasks` channel, then closes it.

Run the whole pipeline, one interpreter per stage, with four workers:
    subinterp run examples/pipeline/producer.py examples/pipeline/collector.py \
        examples/pipeline/worker.py examples/pipeline/worker.py \
        examples/pipeline/worker.py examples/pipeline/worker.py
"""
import subinterp

COUNT = 2000

tasks = subinterp.channel("tasks", capacity=100)  # bounded: the producer waits for workers
subinterp.channel("control").send(COUNT)          # tells the collector what to expect
for n in range(COUNT):
    tasks.send(10_000 + n)
tasks.close()  # workers stop once the queue is drained
print(f"producer (interpreter {subinterp.id()}): sent {COUNT} tasks")
