"""Scoring many images: which images, records, batched inference fed by
decoding threads, and result files that survive a crash.

Used by qrun (one process) and qengine.distributed (one call per partition on
a Dask worker), so both write the same records.  No numpy: paths and PIL
images are preprocessed into buffers and batched by the runtime.

A record is {"image": path, "top": [{"index", "label", "prob"}, ...], "ms": t}
for a scored image and {"image": path, "error": message} for one that failed;
"ms" (the batch's forward time per image) is the only field that varies
between runs.
"""
import collections
import csv
import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from .errors import QEngineError

IMAGE_EXTENSIONS = frozenset(
    ".bmp .dib .jpg .jpeg .jpe .jfif .png .gif .tif .tiff .webp .ppm .pgm .pbm .pnm"
    .split())
TIMING_FIELDS = ("ms",)


class InputsError(QEngineError):
    """An image argument (folder, @list, -) cannot be read."""


def is_image_name(name):
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def walk_images(folder):
    """Image files under a folder, recursively, by extension, in a stable
    (sorted) order; hidden files and folders are skipped."""
    for root, dirs, files in os.walk(folder, onerror=None, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith(".") and is_image_name(f):
                yield os.path.join(root, f)


def _list_lines(stream):
    for line in stream:
        line = line.rstrip("\r\n")
        if line.strip() and not line.lstrip().startswith("#"):
            yield line


def expand(args, stdin=None):
    """Image arguments -> paths, in order: a folder gives its images
    (recursively, by extension), @FILE the paths listed in FILE (one per line,
    blank lines and # comments skipped), - the paths listed on stdin, anything
    else is an image path as given."""
    out = []
    for a in args:
        a = os.fspath(a)
        if a == "-":
            out.extend(_list_lines(stdin if stdin is not None else sys.stdin))
        elif a.startswith("@") and len(a) > 1 and not os.path.exists(a):
            name = a[1:]
            try:
                with open(name, encoding="utf-8", errors="surrogateescape") as f:
                    out.extend(_list_lines(f))
            except IsADirectoryError:
                raise InputsError(f"{name}: is a directory, expected a list of image paths "
                                  f"(one per line)") from None
            except OSError as e:
                raise InputsError(f"{name}: cannot read the image list: {e.strerror}") from None
        elif os.path.isdir(a):
            out.extend(walk_images(a))
        else:
            out.append(a)
    return out


# -- records -------------------------------------------------------------------

def error_record(path, message):
    return {"image": path, "error": message}


def strip_timing(record):
    """The record without the fields that vary between runs."""
    return {k: v for k, v in record.items() if k not in TIMING_FIELDS}


def csv_header(top):
    cols = ["image"]
    for k in range(1, top + 1):
        cols += [f"top{k}_index", f"top{k}_label", f"top{k}_prob"]
    return cols + ["ms", "error"]


def csv_row(record, top):
    row = [record["image"]]
    tops = record.get("top") or []
    for k in range(top):
        if k < len(tops):
            t = tops[k]
            row += [t["index"], t["label"], repr(t["prob"])]
        else:
            row += ["", "", ""]
    return row + [record.get("ms", ""), record.get("error", "")]


def format_record(record, fmt, top):
    """One record as text in `fmt` ("jsonl" or "csv"), newline included."""
    if fmt == "jsonl":
        return json.dumps(record, ensure_ascii=False) + "\n"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(csv_row(record, top))
    return buf.getvalue()


def format_header(fmt, top):
    if fmt != "csv":
        return ""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(csv_header(top))
    return buf.getvalue()


# -- the pipeline ----------------------------------------------------------------

class Scorer:
    """Scores images in batches: worker threads decode and preprocess the next
    images while the network runs on the current batch (the kernels release
    the GIL, Pillow's decoders mostly too).  Records come out in input order.

    model       a loaded qengine.Model
    batch       images per forward pass
    io_threads  decoding threads (0: decode in the calling thread)
    top         classes per record
    """

    def __init__(self, model, batch=8, io_threads=2, top=5):
        if batch < 1 or io_threads < 0 or top < 1:
            raise ValueError("batch and top must be >= 1, io_threads >= 0")
        self.model, self.batch, self.io_threads, self.top = model, batch, io_threads, top
        self.forward_seconds = 0.0          # time spent in the network, for reports

    def _load(self, path):
        try:
            return self.model.preprocessor(path), None
        except QEngineError as e:
            return None, str(e)
        except OSError as e:
            return None, f"{path}: {e.strerror or e}"

    def _decoded(self, paths):
        """(path, input, error) in order, decoded ahead by the worker threads."""
        if self.io_threads == 0:
            for p in paths:
                yield (p,) + self._load(p)
            return
        ahead = 2 * self.batch + 2 * self.io_threads      # bounded: memory stays flat
        with ThreadPoolExecutor(self.io_threads, thread_name_prefix="qengine-decode") as ex:
            pending = collections.deque()
            it = iter(paths)
            try:
                for p in it:
                    pending.append((p, ex.submit(self._load, p)))
                    if len(pending) >= ahead:
                        q, f = pending.popleft()
                        yield (q,) + f.result()
                while pending:
                    q, f = pending.popleft()
                    yield (q,) + f.result()
            finally:
                for _, f in pending:
                    f.cancel()

    def _run(self, slots):
        inputs = [x for _, x, _ in slots if x is not None]
        tops, ms, err = [], 0.0, None
        if inputs:
            t0 = time.perf_counter()
            try:
                tops = self.model.classify(self.model.stack(inputs), top=self.top)
            except QEngineError as e:
                err = str(e)
            dt = time.perf_counter() - t0
            self.forward_seconds += dt
            ms = round(dt * 1e3 / len(inputs), 3)
        out, k = [], 0
        for path, x, e in slots:
            if x is None:
                out.append(error_record(path, e))
            elif err is not None:
                out.append(error_record(path, err))
            else:
                out.append({"image": path, "top": tops[k], "ms": ms})
                k += 1
        return out

    def batches(self, paths):
        """Lists of records for `paths` (any iterable), in order, one list per
        forward pass (with the failed images among them)."""
        slots, n = [], 0
        for path, x, err in self._decoded(paths):
            slots.append((path, x, err))
            n += x is not None
            if n >= self.batch:
                yield self._run(slots)
                slots, n = [], 0
        if slots:
            yield self._run(slots)

    def records(self, paths):
        """Records for `paths` (any iterable), in order."""
        for recs in self.batches(paths):
            yield from recs


# -- result files ------------------------------------------------------------------

def format_of(path, jsonl=False, csv_=False):
    """The output format: the flag given, else by the file's extension, else jsonl."""
    if jsonl and csv_:
        raise ValueError("give --jsonl or --csv, not both")
    if csv_:
        return "csv"
    if jsonl or path is None:
        return "jsonl"
    return "csv" if path.lower().endswith(".csv") else "jsonl"


def _read_done(path, fmt):
    """(images already in a result file, the byte length of its complete
    records): a last line cut short by a crash is not a record and is
    dropped; any other unreadable line is an error (not our file?)."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n") + 1          # complete lines only
    text = data[:end].decode("utf-8", errors="surrogateescape")
    done, header = set(), None
    if fmt == "jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                done.add(rec["image"])
            except (ValueError, KeyError, TypeError):
                raise InputsError(f"{path}: line {n} is not a qrun record; not resuming "
                                  f"into a file qrun did not write") from None
    else:
        rows = csv.reader(io.StringIO(text, newline=""))
        header = next(rows, None)
        if header is not None and (not header or header[0] != "image"):
            raise InputsError(f"{path}: does not start with qrun's CSV header; not resuming "
                              f"into a file qrun did not write")
        for row in rows:
            if row:
                done.add(row[0])
    return done, end, header


class ResultFile:
    """A result file written as records come: each batch is flushed to the
    OS at once (a killed process loses nothing already written) and fsynced
    at most every `sync_every` seconds.  resume=True appends to an existing
    file and reports the images it holds (a last line cut short by a crash is
    removed first); otherwise an existing file is refused unless force."""

    def __init__(self, path, fmt, top, resume=False, force=False, sync_every=1.0):
        from .files import check_destination
        self.path, self.fmt, self.top, self.sync_every = path, fmt, top, sync_every
        self.done = set()
        exists = os.path.lexists(path)
        if exists and resume:
            from .files import check_regular
            check_regular(path, InputsError, "result file")
            self.done, end, header = _read_done(path, fmt)
            if fmt == "csv" and header is not None and header != csv_header(top):
                raise InputsError(f"{path}: its columns are for another --top; resume with "
                                  f"the same --top")
            self.f = open(path, "r+b")
            self.f.truncate(end)
            self.f.seek(end)
            if end == 0:
                self.f.write(format_header(fmt, top).encode())
        else:
            if exists:
                check_destination(path, force)
            else:
                check_destination(path, False)
            self.f = open(path, "wb")
            self.f.write(format_header(fmt, top).encode())
        self.last_sync = time.monotonic()
        self.written = 0

    def write(self, records):
        for r in records:
            self.f.write(format_record(r, self.fmt, self.top).encode("utf-8", "surrogateescape"))
            self.written += 1
        self.f.flush()
        now = time.monotonic()
        if now - self.last_sync >= self.sync_every:
            os.fsync(self.f.fileno())
            self.last_sync = now

    def close(self):
        if self.f is not None:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            self.f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class StreamSink:
    """Records to an open text stream (stdout), flushed a batch at a time."""

    def __init__(self, stream, fmt, top):
        self.stream, self.fmt, self.top, self.done = stream, fmt, top, set()
        stream.write(format_header(fmt, top))

    def write(self, records):
        for r in records:
            self.stream.write(format_record(r, self.fmt, self.top))
        self.stream.flush()

    def close(self):
        self.stream.flush()
