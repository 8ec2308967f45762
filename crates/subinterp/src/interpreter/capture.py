# Run in a new interpreter that captures its output: sys.stdout and sys.stderr write to
# memory, read back by the host (Interpreter::take_output).
import io, sys


def _stream():
    return io.TextIOWrapper(
        io.BytesIO(), encoding='utf-8', errors='backslashreplace', write_through=True
    )


sys.stdout = _stream()
sys.stderr = _stream()
