"""Opening the files qengine reads and writes, safely.

Every input is opened without blocking and must be a regular file: a FIFO
would hang the reader until someone writes to it, a device node could be read
forever (/dev/zero) or have side effects.  Outputs are written beside their
destination and renamed over it only if the destination is a regular file or
absent (a dangling symlink counts as present).
"""
import os
import stat

from .errors import FormatError, QEngineError


def _kind(mode):
    """What a non-regular file is, for messages."""
    return ("a directory" if stat.S_ISDIR(mode) else
            "a FIFO" if stat.S_ISFIFO(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
            "a socket" if stat.S_ISSOCK(mode) else "not a regular file")


def check_regular(path, error=FormatError, what="file"):
    """Raise `error` unless path names an existing regular file (symlinks followed)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as e:
        raise error(f"{path}: cannot open: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: is {_kind(st.st_mode)}, expected a regular {what}")
    return st


def exists_error(path):
    return QEngineError(f"{path}: already exists (use --force to replace it)")


def check_destination(path, force):
    """An output may replace only a regular file (or, with force, a symlink):
    never a device node, FIFO, socket or directory.  A symlink, dangling or
    not, counts as an existing file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise QEngineError(f"{path}: the output directory {os.path.dirname(path) or parent} "
                               f"does not exist") from None
        return
    except OSError as e:
        raise QEngineError(f"{path}: cannot write here: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode):
        if not force:
            raise exists_error(path)
        return
    raise QEngineError(f"{path}: is {_kind(st.st_mode)}; outputs are written to regular "
                       f"files only")


def open_regular(path, what="file", error=FormatError, mode="rb", encoding=None):
    """Open a regular file for reading (binary, or text with `encoding`).  The
    file is opened without blocking and checked again after opening, so that
    a FIFO swapped in between cannot hang the caller."""
    path = os.fspath(path)
    check_regular(path, error, what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise error(f"{path}: cannot open: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"{path}: is not a regular {what}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        if encoding is None:
            return os.fdopen(fd, mode)
        return os.fdopen(fd, mode.replace("b", ""), encoding=encoding, newline="")
    except BaseException:
        os.close(fd)
        raise
