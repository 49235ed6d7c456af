"""Command-line tools: qconvert, qrun, qbench."""
import sys


def fail(prog, msg, code=1):
    """One clear line on stderr and a non-zero exit."""
    print(f"{prog}: error: {msg}", file=sys.stderr)
    sys.exit(code)
