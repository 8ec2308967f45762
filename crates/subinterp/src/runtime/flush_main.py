# Run in the main interpreter when it is left unfinalised: what Python code wrote
# and Python still buffers reaches its destination.
import sys
for stream in (sys.stdout, sys.stderr):
    try:
        stream.flush()
    except Exception:
        pass
