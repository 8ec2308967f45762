"""A cached virtual environment for peer benchmarks that need packages from PyPI.

One venv per Python minor version lives in target/bench-venv-<major>.<minor>/ at the
repository root. It is rebuilt when the Python that asks for it is a different build
(other base prefix or version string) than the one that created it, and missing
requirements are added with pip. pip's and venv's output goes to stderr, so a script's
stdout stays clean for its JSON.

  ensure_venv(requirements)     -> path of the venv's python, creating/updating it first
  reexec_in_venv(requirements)  ensure_venv(), then re-run the calling script with the
                                venv's python (same arguments) unless already running there
"""
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

TARGET_DIR = Path(__file__).resolve().parent.parent / "target"
STATE_FILE = "bench-venv.json"


def venv_dir():
    """Directory of the venv for the running Python's minor version."""
    return TARGET_DIR / f"bench-venv-{sys.version_info[0]}.{sys.version_info[1]}"


def base_identity():
    """What identifies the Python build that a venv must be made from."""
    return {"base_prefix": sys.base_prefix, "version": sys.version}


def read_state(directory):
    """The identity and installed requirements recorded for a venv, or None."""
    try:
        return json.loads((directory / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def run_to_stderr(command):
    """Run a command with its output sent to stderr; raise if it fails."""
    subprocess.run(command, stdout=sys.stderr, check=True)


def ensure_venv(requirements):
    """Create or update the cached venv so it holds `requirements`; return its python."""
    directory = venv_dir()
    python = directory / "bin" / "python"
    TARGET_DIR.mkdir(parents=True, exist_ok=True)
    with open(TARGET_DIR / f"{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = read_state(directory)
        if state is None or state.get("identity") != base_identity():
            print(f"creating {directory}", file=sys.stderr)
            run_to_stderr([sys.executable, "-m", "venv", "--clear", str(directory)])
            state = {"identity": base_identity(), "installed": []}
        missing = [r for r in requirements if r not in state["installed"]]
        if missing:
            print(f"installing {' '.join(missing)} into {directory}", file=sys.stderr)
            run_to_stderr([str(python), "-m", "pip", "install",
                           "--disable-pip-version-check", *missing])
            state["installed"] = sorted(set(state["installed"]) | set(missing))
        (directory / STATE_FILE).write_text(json.dumps(state, indent=1))
    return python


def reexec_in_venv(requirements):
    """Ensure the venv, then replace this process by the calling script run with the
    venv's python, unless this process already is that python."""
    python = ensure_venv(requirements)
    if Path(sys.prefix).resolve() == venv_dir().resolve():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(python, [str(python), os.path.abspath(sys.argv[0]), *sys.argv[1:]])
