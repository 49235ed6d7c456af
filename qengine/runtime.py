"""The runtime: a loaded model that runs its layer graph on the C kernels.

Python here only orchestrates: it checks inputs, allocates outputs and calls
one kernel per layer; every kernel releases the GIL.  A Model is immutable
after loading and keeps one scratch workspace per calling thread, so one
Model may serve many threads at once.
"""
import math
import os
import sys
import threading
import time

from . import _kernels, budget, buffers
from .errors import FormatError, InputError, ModelError, QEngineError
from .format import QcnnFile
from .graph import infer_shapes, validate
from .layers import record
from .preprocess import Preprocessor, _is_array, check_preprocess

MODES = ("exact", "fast")


def _isa_from_env():
    isa = os.environ.get("QENGINE_ISA")
    if isa:
        try:
            _kernels.set_isa(isa)
        except ValueError as e:
            raise QEngineError(f"QENGINE_ISA={isa}: {e}") from None


_isa_from_env()


MAX_THREADS = 1024


def check_threads(threads):
    """A thread count: a positive integer (not a string, float or bool)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or \
            not 1 <= threads <= MAX_THREADS:
        raise InputError(f"threads must be an integer from 1 to {MAX_THREADS}, got {threads!r}")
    return threads


# Fork safety.  libgomp's thread pool does not survive fork(): a child that
# enters a parallel region with more than one thread after its parent ran one
# waits forever for threads that do not exist (Python's default multiprocessing
# start method on Linux is fork).  A child forked after threaded work therefore
# runs single-threaded; one forked before any keeps its threads.
_THREADS_USED = False
_FORKED_AFTER_THREADS = False


def _after_fork_in_child():
    global _FORKED_AFTER_THREADS
    if _THREADS_USED:
        _FORKED_AFTER_THREADS = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _add_mean_profile(profile, profs):
    """Adds to profile each layer's seconds averaged over the parts of a batch
    that ran side by side (profs: one profile per part)."""
    if profile is not None:
        for pr in profs:
            for k, v in pr.items():
                profile[k] = profile.get(k, 0.0) + v / len(profs)


def _threads_now(threads):
    """The threads a call may use now (1 in a child forked after threaded work)."""
    global _THREADS_USED
    if _FORKED_AFTER_THREADS:
        return 1
    if threads > 1:
        _THREADS_USED = True
    return threads


def _l2_bytes():
    """This CPU's level-2 cache in bytes (Linux sysfs; 1 MiB where unknown)."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for d in sorted(os.listdir(base)):
            with open(os.path.join(base, d, "level")) as f:
                if f.read().strip() != "2":
                    continue
            with open(os.path.join(base, d, "type")) as f:
                if f.read().strip() not in ("Unified", "Data"):
                    continue
            with open(os.path.join(base, d, "size")) as f:
                size = f.read().strip()
            mult = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
            n = int(size.rstrip("KM")) * mult
            if n >= 64 << 10:
                return n
    except (OSError, ValueError):
        pass
    return 1 << 20


L2_BYTES = _l2_bytes()


def _check_top(top):
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise InputError(f"top must be a positive integer, got {top!r}")



class Model:
    """A loaded .qcnn model. Create with qengine.load(path)."""

    def __init__(self, path, mode="exact", threads=1, strategy="auto", limits=None):
        if strategy not in ("auto", "lut"):
            raise InputError(f"strategy must be 'auto' or 'lut', got {strategy!r}")
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self._executor = None
        self._pool_lock = threading.Lock()
        self.threads = threads
        self.limits = budget.resolve(limits)
        # the tensors' checksums are verified after the budget check: a model
        # refused for its size is refused without reading gigabytes first
        qf = QcnnFile(path, verify=False)
        self.path = qf.path
        self.file_size = qf.size
        meta = qf.metadata
        graph = meta.get("graph")
        if not isinstance(graph, dict):
            raise FormatError(f"{qf.path}: metadata has no layer graph")
        try:
            validate(graph)
            shapes = infer_shapes(graph)
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{qf.path}: malformed layer graph ({type(e).__name__}: {e})") from None
        except ModelError as e:
            raise ModelError(f"{qf.path}: {e}") from None
        self.graph = graph
        self.metadata = meta
        self.input_name = graph["input"]["name"]
        self.input_shape = tuple(graph["input"]["shape"])
        self.blob_shapes = shapes
        self._ops = []
        opts = {"dense_small": strategy == "auto", "fast": mode == "fast"}
        try:
            for L in graph["layers"]:
                ins = [shapes[b] for b in L["bottom"]]
                self._ops.append(record(L["type"]).Op(L, ins, shapes[L["top"][0]], qf, opts))
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{qf.path}: malformed layer entry ({type(e).__name__}: {e})") from None
        if not self._ops:
            raise ModelError(f"{qf.path}: the model has no layers")
        self.layer_names = [op.name for op in self._ops]
        names = meta.get("class_names") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise FormatError(f"{qf.path}: class_names must be a list of strings")
        self.class_names = names
        pp = meta.get("preprocess")
        pp = {} if pp is None else pp
        try:
            self._mean_bytes = check_preprocess(pp, self.input_shape, qf, self.limits)
        except ModelError as e:
            raise ModelError(f"{qf.path}: {e}") from None
        self._preprocess_spec = pp
        self._preprocessor = None
        self._pp_lock = threading.Lock()
        self._local = threading.local()
        # the execution plan, made once: the last layer that reads each blob (to
        # drop activations early), the ReLUs fused into the layer before them,
        # concatenations written in place, sums written over a dead input
        self._last_use, self._readers = {}, {}
        for i, op in enumerate(self._ops):
            for b in op.bottom:
                self._last_use[b] = i
                self._readers.setdefault(b, []).append(i)
        self._fused = {i for i in range(len(self._ops)) if self._relu_follows(i)}
        self._concat_into = self._plan_concat_in_place()
        self._reuse = self._plan_reuse()
        self._qf = qf
        self._check_budget()
        self._cut, self._chunk = self._plan_chunks()
        qf.verify()
        # the budget holds: decode and lay out the weights (a tensor shared by
        # several layers decoded once)
        qf.keep_decoded(True)
        try:
            for op in self._ops:
                op.materialize()
        except MemoryError:
            raise ModelError(f"{qf.path}: out of memory decoding the weights (the model "
                             f"needs {budget.human(self.resources['tensors'], 'tensors')}; "
                             f"this process may not allocate that much)") from None
        finally:
            qf.keep_decoded(False)

    def _check_budget(self):
        """Refuse, before anything is decoded or run, a model that needs more
        than self.limits (see qengine.budget)."""
        lim, path = self.limits, self.path
        need_in = 4 * buffers.count(self.input_shape)
        fail = [budget.exceeded("input", need_in, lim, f"the input {list(self.input_shape)}")]
        sources, derived = {}, 0
        work, work_fail = 0, None
        ws_floats, ws_layer = 16, None
        for op in self._ops:
            work += op.work()
            sources.update(op.sources)
            derived += op.derived_bytes
            try:
                wsf = op.workspace()
            except ValueError as e:
                raise ModelError(f"{path}: layer {op.name!r}: {e}") from None
            if wsf > ws_floats:
                ws_floats, ws_layer = wsf, op.name
            # named at the first layer where the running total goes over the limit
            work_fail = work_fail or budget.exceeded("work", work, lim,
                                                     f"up to layer {op.name!r}, the model")
        fail.append(work_fail)
        tensors = sum(sources.values()) + derived + self._mean_bytes
        fail.append(budget.exceeded("tensors", tensors, lim, "decoding the weights"))
        fail.append(budget.exceeded("workspace", 4 * ws_floats, lim, f"layer {ws_layer!r}"))
        peak, at = self._peak_activations()
        fail.append(budget.exceeded("activations", peak, lim, f"one image, at layer {at!r},"))
        for msg in fail:
            if msg:
                raise ModelError(f"{path}: {msg}")
        self._ws_floats = ws_floats
        self.resources = {"tensors": tensors, "activations": peak, "workspace": 4 * ws_floats,
                          "input": need_in, "work": work}

    def _peak_activations(self):
        """(bytes, layer): the most activation bytes alive at once while one
        image runs the schedule of _run (input included), and where."""
        live = {self.input_name: 4 * buffers.count(self.input_shape)}
        peak, at = sum(live.values()), self.input_name
        ops = self._ops
        i = 0
        while i < len(ops):
            op = ops[i]
            size = 4 * buffers.count(op.out_shape)
            alias = 0
            if i in self._concat_into:          # writes into its concatenation's buffer
                ci = self._concat_into[i][0]
                key = ("concat", ci)
                if key not in live:
                    live[key] = 4 * buffers.count(ops[ci].out_shape)
                size, alias = 0, 1
            elif ("concat", i) in live:         # that buffer, already written
                size = live.pop(("concat", i))
            elif i in self._reuse:              # written over an input
                size = 0
                alias = live.get(op.bottom[self._reuse[i]], 0) or 1
            elif op.aliases_input:              # its input's buffer
                size = 0
                alias = live.get(op.bottom[0], 0) or 1
            now = sum(live.values()) + size
            if now > peak:
                peak, at = now, op.name
            done = op.bottom
            if i in self._fused:
                i += 1
                done = done + ops[i].bottom
            for b in done:
                if self._last_use.get(b, -1) <= i:
                    live.pop(b, None)
            for t in ops[i].top:
                live[t] = size if not alias else (alias if alias > 1 else 0)
            i += 1
        return peak, at

    @property
    def threads(self):
        """Threads each call may use (settable: an integer from 1 to MAX_THREADS)."""
        return self._threads

    @threads.setter
    def threads(self, n):
        self._threads = check_threads(n)
        with self._pool_lock:
            ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=False)

    def _relu_follows(self, i):
        """True when op i+1 is a plain ReLU of op i's output, the only layer
        that reads it, and op i's kernel can apply it itself (convolutions,
        fully-connected, sums, affine)."""
        ops = self._ops
        if not (i + 1 < len(ops) and record(ops[i].type).fuses_relu
                and ops[i + 1].type == "ReLU" and ops[i + 1].params["negative_slope"] == 0.0
                and ops[i + 1].bottom == ops[i].top):
            return False
        t = ops[i].top[0]
        # in place (same name), or the ReLU is the only reader of a new blob
        return ops[i + 1].top == ops[i].top or self._readers.get(t) == [i + 1]

    def _plan_reuse(self):
        """{layer index: input position} for layers that write their output
        over an input (element-wise sums, LRN; Op.can_overwrite): a buffer its
        producer allocated (not the network's input, not a pass-through or a
        concatenation's part) that no later layer reads under any name."""
        producer = {}
        for i, op in enumerate(self._ops):
            for t in op.top:
                if t not in op.bottom:
                    producer[t] = i
        plan = {}
        for i, op in enumerate(self._ops):
            for k, b in enumerate(op.bottom):
                pi = producer.get(b)
                if not op.can_overwrite(k) or pi is None or pi in self._concat_into \
                        or self._ops[pi].aliases_input or op.bottom.count(b) > 1 or self._last_use.get(b) != i \
                        or any(self._ops[r].aliases_input for r in self._readers[b]):
                    continue
                # a ReLU fused into the producer or applied in place keeps the buffer
                plan[i] = k
                break
        return plan

    def _plan_concat_in_place(self):
        """{producer index: (concat index, first channel)} for concatenations
        (along channels) whose inputs are convolutions read by nothing else (an
        in-place ReLU after one is fused into it): those write straight into the
        concatenation's output, which then costs no copy."""
        producer, readers = {}, {}
        for i, op in enumerate(self._ops):
            for b in op.bottom:
                readers.setdefault(b, []).append(i)
            for t in op.top:
                if t not in op.bottom:
                    producer[t] = i
        plan = {}
        for ci, op in enumerate(self._ops):
            if op.type != "Concat" or op.params.get("axis", 1) != 1 \
                    or len(set(op.bottom)) != len(op.bottom):
                continue
            c0, cand = 0, {}
            for b in op.bottom:
                pi = producer.get(b)
                if pi is None or pi >= ci or pi in plan or pi in cand:
                    break
                p = self._ops[pi]
                others = [r for r in readers.get(b, []) if r != ci]
                fused_relu = others == [pi + 1] and self._relu_follows(pi)
                if p.type != "Convolution" or p.top != [b] or (others and not fused_relu):
                    break
                cand[pi] = (ci, c0)
                c0 += p.out_shape[0]
            else:
                plan.update(cand)
        return plan

    def _plan_chunks(self):
        """(cut, chunk): a batch runs ops[:cut] (the trunk) chunk images at a
        time, so that one chunk's activations stay in the level-2 cache, and
        ops[cut:] (the head) on the whole batch, so that fully-connected layers
        read their weights once per batch.  The head starts at the first
        fully-connected layer whose input is the only blob alive there; without
        one the whole network is trunk."""
        ops = self._ops
        cut = len(ops)
        for i, op in enumerate(ops):
            if op.type == "InnerProduct":
                made = [self.input_name] + [b for j in range(i) for b in ops[j].top]
                alive = {b for b in made if self._last_use.get(b, -1) >= i}
                if i > 0 and alive == set(op.bottom):
                    cut = i
                break
        chunk = max(1, L2_BYTES // max(1, self.resources["activations"]))
        return cut, chunk

    # -- running ----------------------------------------------------------
    def _workspace(self, slot=0):
        """The calling thread's scratch; slot i > 0: the scratch it lends the
        i-th thread of its OpenMP team (_forward_shared_head), which holds no
        Python state of its own between calls."""
        wss = getattr(self._local, "ws", None)
        if wss is None:
            wss = self._local.ws = []
        while len(wss) <= slot:
            wss.append(buffers.empty((self._ws_floats,)))
        return wss[slot]

    def forward(self, x, outputs=None, profile=None):
        """Run the network on a preprocessed float32 batch x [N, C, H, W].

        Returns the last layer's output, or with outputs=[names] a dict of those
        layers' outputs ([N, C, H, W], or [N, C] after fully-connected layers),
        as numpy arrays.  With profile={} the seconds spent in each layer are added to it."""
        import numpy as np
        if getattr(self, "_closed", False):
            raise InputError(f"{self.path}: the model is closed")
        try:
            x = np.asarray(x)
            if x.dtype.kind not in "fiub":
                raise TypeError(f"values of type {x.dtype}")
        except (TypeError, ValueError) as e:
            raise InputError(f"input must be a numeric array [N, C, H, W] ({e})") from None
        if x.ndim == 3:
            raise InputError(f"input must be a batch [N, C, H, W]; got {list(x.shape)} "
                             f"(add a batch axis: x[None])")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape or x.shape[0] < 1:
            raise InputError(f"input must be [N, {', '.join(map(str, self.input_shape))}] with "
                             f"N >= 1, got {list(x.shape)}")
        x = memoryview(np.ascontiguousarray(x, dtype=np.float32))
        want = None
        if outputs is not None:
            if isinstance(outputs, str):
                outputs = [outputs]
            if not isinstance(outputs, (list, tuple)) or \
                    not all(isinstance(n, str) for n in outputs):
                raise InputError(f"outputs must be a layer name or a list of layer names, "
                                 f"got {outputs!r:.100}")
            want = list(outputs)
            unknown = [n for n in want if n not in self.layer_names]
            if unknown:
                raise InputError(f"unknown layer name(s) {unknown}; layers: {self.layer_names}")
        out = self._forward_checked(x, want, profile)
        if want is not None:
            return {k: buffers.to_numpy(v) for k, v in out.items()}
        return buffers.to_numpy(out)

    def __call__(self, x, outputs=None, profile=None):
        """model(x) is model.forward(x)."""
        return self.forward(x, outputs, profile)

    def close(self):
        """Release the model's weights, file mapping and threads now (rather
        than when it is garbage-collected); it cannot run afterwards."""
        with self._pool_lock:
            ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=True)
        self._closed = True
        self._ops = []
        self._local = threading.local()
        self._qf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _forward_checked(self, x, want=None, profile=None):
        if getattr(self, "_closed", False):
            raise InputError(f"{self.path}: the model is closed")
        try:
            return self._forward(x, want, profile)
        except MemoryError:
            raise InputError(f"{self.path}: out of memory running a batch of {x.shape[0]} "
                             f"(about {budget.human(self.resources['activations'], 'activations')} "
                             f"of activations per image); use smaller batches or a lower "
                             f"'activations' limit") from None

    def _forward(self, x, want=None, profile=None):
        """forward() on a checked C-contiguous float32 buffer [N, C, H, W]; returns buffers."""
        n = x.shape[0]
        # a batch runs in slices whose activations fit the budget (same results:
        # every kernel treats the images of a batch independently)
        per = max(1, self.limits["activations"] // max(1, self.resources["activations"]))
        if n > per:
            outs = [self._forward(x[i:i + per], want, profile) for i in range(0, n, per)]
            if want is not None:
                return {k: buffers.concat([o[k] for o in outs], 0) for k in want}
            return buffers.concat(outs, 0)
        nthreads = _threads_now(self.threads)
        if nthreads > 1 and 1 < n <= nthreads and self._cut < len(self._ops):
            return self._forward_shared_head(x, want, profile, nthreads)
        if nthreads > 1 and n > 1:
            # A batch: one slice of images per thread, each thread's kernels
            # single-threaded (they release the GIL, so the slices run in
            # parallel); this thread runs the first slice itself.
            parts = min(nthreads, n)
            bounds = [n * i // parts for i in range(parts + 1)]
            profs = [None if profile is None else {} for _ in range(parts)]
            futs = [self._pool().submit(self._run, x[bounds[i]:bounds[i + 1]], want, profs[i], 1)
                    for i in range(1, parts)]
            try:
                first = self._run(x[:bounds[1]], want, profs[0], 1)
            finally:
                outs = [f.result() for f in futs]
            outs = [first] + outs
            _add_mean_profile(profile, profs)
            if want is not None:
                return {k: buffers.concat([o[k] for o in outs], 0) for k in want}
            return buffers.concat(outs, 0)
        return self._run(x, want, profile, nthreads)

    def _forward_shared_head(self, x, want, profile, nthreads):
        """A batch of at most one image per thread with a fully-connected head
        (e.g. 2 images on 2 threads): each image's trunk on a thread of its own
        (single-threaded kernels), then the head on the whole batch on all
        threads.  Sliced, each thread would read all the fully-connected
        weights for its one image (AlexNet's fc6-8 then scaled 1.2x on 2
        threads).  The threads are one OpenMP team (_kernels.run_team), the
        same threads the head's kernels then use: a thread pool of our own
        beside OpenMP's would leave OpenMP's threads spinning on the cores the
        next batch's slices need.  Same results as one thread."""
        n, cut = x.shape[0], self._cut
        keep = set(want or [])
        profs = [None if profile is None else {} for _ in range(n)]
        wss = [self._workspace(i) for i in range(n)]
        runs = [lambda i=i: self._run_ops({self.input_name: x[i:i + 1]}, 0, cut, keep, profs[i],
                                          1, want is None, wss[i]) for i in range(n)]
        parts = []
        for ok, v in _kernels.run_team(runs, n):
            if not ok:
                raise v
            parts.append(v)
        _add_mean_profile(profile, profs)
        return self._run_head(parts, keep, profile, nthreads, want)

    def _pool(self):
        with self._pool_lock:
            if self._executor is None:
                from concurrent.futures import ThreadPoolExecutor
                self._executor = ThreadPoolExecutor(max_workers=self.threads,
                                                    thread_name_prefix="qengine")
            return self._executor

    def _run(self, x, want, profile, nthreads):
        """Run the network on a batch: the trunk chunk by chunk, then the head
        on the whole batch (see _plan_chunks).  Every kernel treats the images
        of a batch independently, so the result does not depend on the chunks."""
        n, ops = x.shape[0], self._ops
        keep = set(want or [])
        if n <= self._chunk:
            _, results, out = self._run_ops({self.input_name: x}, 0, len(ops), keep, profile,
                                            nthreads, want is None)
            return out if want is None else {name: results[name] for name in want}
        c = self._chunk
        parts = [self._run_ops({self.input_name: x[i:i + c]}, 0, self._cut, keep, profile,
                               nthreads, want is None) for i in range(0, n, c)]
        return self._run_head(parts, keep, profile, nthreads, want)

    def _run_head(self, parts, keep, profile, nthreads, want):
        """The trunk's parts (_run_ops of ops[:cut] on a few images each, in
        batch order; the list is emptied here, so that their buffers are free
        before the head runs) joined, then the head on the whole batch."""
        ops, cut = self._ops, self._cut
        results = {k: buffers.concat([p[1][k] for p in parts], 0) for k in parts[0][1]}
        if cut == len(ops):
            out = buffers.concat([p[2] for p in parts], 0)
        else:
            blobs = {b: buffers.concat([p[0][b] for p in parts], 0) for b in parts[0][0]
                     if self._last_use.get(b, -1) >= cut}
            parts.clear()
            blobs, more, out = self._run_ops(blobs, cut, len(ops), keep, profile, nthreads,
                                             want is None)
            results.update(more)
        if want is not None:
            return {name: results[name] for name in want}
        return out

    def _run_ops(self, blobs, lo, hi, keep, profile, nthreads, into_ok, ws=None):
        """Run ops[lo:hi] on blobs {name: buffer} (scratch ws: the calling
        thread's by default); returns (blobs alive after them, {kept layer
        name: output}, the last op's output)."""
        if ws is None:
            ws = self._workspace()
        results = {}
        ops = self._ops
        n = blobs[next(iter(blobs))].shape[0]
        # concatenations written in place by their inputs (not when a caller
        # asks for intermediate outputs: they must stay separate buffers)
        into_plan = self._concat_into if into_ok else {}
        cat_bufs = {}
        out = None
        i = lo
        while i < hi:
            op = ops[i]
            fuse = i in self._fused and op.name not in keep
            t0 = time.perf_counter() if profile is not None else 0.0
            if i in into_plan:
                ci, c0 = into_plan[i]
                if ci not in cat_bufs:
                    cat_bufs[ci] = ops[ci].new_out(n)
                out = op.run([blobs[b] for b in op.bottom], ws, nthreads, fuse,
                             into=(cat_bufs[ci], c0))
            elif i in cat_bufs:                   # a concatenation already written
                out = cat_bufs.pop(i)
            elif i in self._reuse and not keep:
                xs = [blobs[b] for b in op.bottom]
                out = op.run(xs, ws, nthreads, fuse, reuse=xs[self._reuse[i]])
                del xs   # (a reference here would keep a dead input's memory from reuse)
            else:
                out = op.run([blobs[b] for b in op.bottom], ws, nthreads, fuse)
            if profile is not None:
                profile[op.name] = profile.get(op.name, 0.0) + time.perf_counter() - t0
            if op.name in keep:
                results[op.name] = out
            done = op.bottom
            if fuse:                              # the ReLU after it, applied by op
                i += 1
                if ops[i].name in keep:
                    results[ops[i].name] = out
                done = done + ops[i].bottom
            for b in done:
                if self._last_use.get(b, -1) <= i and b in blobs:
                    del blobs[b]
            for t in ops[i].top:
                blobs[t] = out
            i += 1
        return blobs, results, out

    @property
    def preprocessor(self):
        """The model's preprocessing, built on first use (it may decode a mean image)."""
        if self._preprocessor is None:
            with self._pp_lock:
                if self._preprocessor is None:
                    pp = self._preprocess_spec
                    mean = None
                    if isinstance(pp.get("mean"), dict) and pp["mean"].get("type") == "image":
                        mean = self._qf.view(str(pp["mean"].get("tensor", "")))
                    try:
                        self._preprocessor = Preprocessor(pp, self.input_shape, mean)
                    except ModelError as e:
                        raise ModelError(f"{self.path}: {e}") from None
        return self._preprocessor

    def preprocess(self, images):
        """Images (paths, PIL images, uint8 arrays) -> float32 batch [N, C, H, W] (numpy)."""
        return buffers.to_numpy(self._preprocess(images))

    def _preprocess(self, images):
        if self._single(images):
            images = [images]
        return self.stack([self._input(im) for im in images])

    def stack(self, inputs):
        """Preprocessed inputs [C, H, W] (buffers from Model.preprocessor) -> a batch buffer."""
        return buffers.concat([buffers.reshape(a, (1,) + tuple(a.shape)) for a in inputs], 0)

    def _single(self, x):
        """One image: a path, a PIL image, a uint8 H x W or H x W x 3 array, or
        a float [C, H, W] array already preprocessed."""
        if isinstance(x, (str, bytes, os.PathLike)):
            return True
        pil = sys.modules.get("PIL.Image")
        if pil is not None and isinstance(x, pil.Image):
            return True
        if _is_array(x):
            return x.ndim in (2, 3)
        return False

    def _input(self, x):
        """One image -> the network's input [C, H, W] (a float buffer)."""
        if _is_array(x) and x.dtype.kind == "f":
            import numpy as np
            if tuple(x.shape) != self.input_shape:
                raise InputError(f"a float array is taken as a preprocessed input and must be "
                                 f"{list(self.input_shape)}, got {list(x.shape)}")
            return memoryview(np.ascontiguousarray(x, np.float32))
        return self.preprocessor(x)

    def predict(self, images, top=5, batch=16):
        """Classify images; returns, per image, the top classes as dicts
        {"index", "label", "prob"}, most probable first.

        images: one image (a path, a PIL image, a uint8 H x W or H x W x 3
        array, or a float [C, H, W] array already preprocessed) -> a list of
        one result; a float batch [N, C, H, W] or uint8 [N, H, W, 3], a list
        or tuple of images -> a list of results; any other iterable (a
        generator, a folder walk) -> a generator of results, read and run
        `batch` images at a time (lazily: a million paths never sit in memory)."""
        _check_top(top)
        if batch < 1:
            raise InputError(f"batch must be at least 1, got {batch}")
        if self._single(images):
            return self.classify(self.stack([self._input(images)]), top)
        if _is_array(images):
            if images.ndim == 4 and images.dtype.kind == "f":
                return self.classify(images, top)
            if images.ndim == 4 and images.dtype.kind == "u":
                return list(self._predict_lazily(iter(images), top, batch))
            raise InputError(f"cannot read an array of {images.dtype} {list(images.shape)} as "
                             f"images: give uint8 H x W (x 3) images or float [N,] C x H x W "
                             f"inputs")
        if isinstance(images, (list, tuple)):
            if not images:
                raise InputError("predict() needs at least one image, got an empty list")
            return list(self._predict_lazily(iter(images), top, batch))
        try:
            it = iter(images)
        except TypeError:
            raise InputError(f"predict() takes images or an iterable of images, got "
                             f"{type(images).__name__}") from None
        return self._predict_lazily(it, top, batch)

    def _predict_lazily(self, it, top, batch):
        chunk = []
        for im in it:
            chunk.append(self._input(im))
            if len(chunk) == batch:
                yield from self.classify(self.stack(chunk), top)
                chunk = []
        if chunk:
            yield from self.classify(self.stack(chunk), top)

    def classify(self, batch, top=5):
        """The top classes of a preprocessed batch [N, C, H, W] (see predict): a numpy
        array, or a batch buffer from Model.stack (then numpy is not needed)."""
        _check_top(top)
        if isinstance(batch, memoryview) and buffers.format_of(batch) == "f" \
                and batch.c_contiguous and tuple(batch.shape[1:]) == self.input_shape:
            out = self._forward_checked(batch)
        else:
            out = memoryview(self.forward(batch))
        softmax = self._ops[-1].type == "Softmax"
        res = []
        for row in buffers.rows(out):
            p = row.cast("f").tolist()
            if not all(map(math.isfinite, p)):
                raise ModelError(f"{self.path}: the network's output is not finite (NaN or "
                                 f"infinity): the model's weights overflow float32 on this input")
            if not softmax:
                hi = max(p)
                e = [math.exp(v - hi) for v in p]
                total = sum(e)
                p = [v / total for v in e]
            order = sorted(range(len(p)), key=p.__getitem__, reverse=True)
            k = min(top, len(p))
            res.append([{"index": i, "label": self.label(i), "prob": p[i]} for i in order[:k]])
        return res

    def label(self, i):
        return self.class_names[i] if 0 <= i < len(self.class_names) else str(i)

    # -- introspection ----------------------------------------------------
    def layer_costs(self, as_quantized=False):
        """[(name, type, dense MACs, table MACs, lookups)] per layer, per image, as
        each layer runs (its strategy), or with as_quantized=True as the model is
        quantized (tables for every quantized layer: the theoretical speed-up)."""
        return [(op.name, op.type) + (op.model_cost() if as_quantized else op.cost())
                for op in self._ops]

    def theoretical_ops(self):
        """(dense multiply-adds, operations of the model as quantized: table
        multiply-adds + lookups for quantized layers, multiply-adds for the
        rest) per image; their ratio is the theoretical speed-up."""
        costs = [c[2:] for c in self.layer_costs(as_quantized=True)]
        return (sum(c[0] for c in costs),
                sum((c[1] + c[2]) if c[1] or c[2] else c[0] for c in costs))

    @property
    def layers(self):
        """The model's layers in run order (read-only): each has name, type,
        params, bottom, top, in_shapes, out_shape and strategy; weighted layers
        also mode ("lut" or "dense") and, when quantized, K, M and d."""
        return tuple(self._ops)

    def weight_bytes(self):
        """(bytes of the weights as dense float32, bytes the file stores for them):
        every layer's weight tensors (codebooks, indices, dense weights, biases,
        per-channel scales)."""
        dense = 0
        for op in self.layers:
            shapes = record(op.type).weight_shapes(op.params, op.in_shapes)
            dense += 4 * sum(buffers.count(s) for s in shapes.values())
        return dense, sum(self.layer_bytes().values())

    def layer_bytes(self):
        """{layer: bytes the file stores for its weight tensors} (0 for a layer
        without weights)."""
        entries = self._qf.header["tensors"]
        return {op.name: sum(entries[v]["nbytes"] for k, v in (op.L.get("weights") or {}).items()
                             if k != "mode" and v in entries)
                for op in self.layers}

    def layer_strategies(self):
        """{layer: kernel} for the weighted layers: "lut" (float table rows),
        "lut16" / "lut8" (fast mode's register tables), "dequantized" / "dense"
        (float), "int16" (fast mode's integer dense convolution), "pointwise" (fast
        mode's float 1x1 convolution for few outputs per input), "winograd" (that
        kernel's form by Winograd F(2x2, 3x3) or F(4x4, 3x3)), "depthwise"."""
        return {op.name: op.strategy for op in self._ops if op.weighted}

    def __repr__(self):
        return (f"<qengine.Model {os.path.basename(self.path)} input={self.input_shape} "
                f"layers={len(self._ops)} mode={self.mode}>")


def load(path, mode="fast", threads=1, strategy="auto", limits=None):
    """Load a .qcnn model once; call forward()/predict() on it many times.

    mode      "fast" (the default, as in the command-line tools): fully-connected
              layers with K <= 32 codewords use 8-bit tables looked up inside SIMD
              registers (one scale per layer and image, one offset per table row);
              convolutions use 16-bit tables looked up inside registers, float
              tables or, where cheaper, a dense kernel in 16-bit integers on
              the dense or dequantized weights, as the instruction set's
              measured prices say (README "Choosing a kernel").
              "exact": float lookup tables everywhere.
    threads   threads each call may use (the kernels split output positions)
    strategy  "auto" runs a first convolution whose input has fewer channels than
              the subspace dimension densely on its dequantized weights (faster,
              same sums); "lut" forces lookup tables for every quantized layer.
    limits    a dict raising (or lowering) some of the resource limits checked at
              load: "tensors", "activations", "workspace", "input", "work"
              (qengine.budget.DEFAULT_LIMITS; see qengine.budget)."""
    return Model(path, mode=mode, threads=threads, strategy=strategy, limits=limits)
