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


def parser(prog, doc):
    """A tool's argument parser: the first paragraph of its docstring as the
    description, the rest (usage examples) as the epilog, and --version."""
    import argparse
    head, _, rest = doc.partition("\n\n")
    ap = argparse.ArgumentParser(prog=prog, description=head, epilog=rest or None,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=_version())
    return ap


def entry(prog):
    """Decorate a tool's main(): a closed output pipe (`qrun ... | head -1`)
    ends it quietly, Ctrl-C with one line, both without a traceback."""
    import functools

    def wrap(main):
        @functools.wraps(main)
        def run(argv=None):
            try:
                return main(argv)
            except BrokenPipeError:
                import os
                # the reader is gone: nothing more can be printed, and Python's
                # own flush at exit must not fail on the closed pipe either
                try:
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, sys.stdout.fileno())
                except (OSError, ValueError):
                    pass
                return 141                     # 128 + SIGPIPE, as the shell reports it
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130
        return run
    return wrap
