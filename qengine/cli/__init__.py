"""Command-line tools: qconvert, qrun, qbench."""
import sys


def fail(prog, msg, code=1):
    """One clear line on stderr and a non-zero exit."""
    print(f"{prog}: error: {msg}", file=sys.stderr)
    sys.exit(code)


def _version():
    """What --version prints: qengine's version, the kernels' instruction set
    on this CPU and the .qcnn format versions it reads."""
    from .. import __version__, _kernels
    from ..format import VERSIONS
    return (f"%(prog)s (qengine) {__version__}, kernels: {_kernels.get_isa()}, "
            f".qcnn format versions {', '.join(map(str, VERSIONS))}")
