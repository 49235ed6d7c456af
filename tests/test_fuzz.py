"""Bounded fuzzing of every reader and of the whole run path (tools/fuzz.py runs
the long campaign): mutated inputs give a result or a QEngineError, never another
exception, a crash, a hang (a kill timeout held by the parent: a signal cannot
interrupt a C kernel) or an allocation beyond the worker's memory cap."""
import pytest

from fuzzkit import Worker

# inputs per target in CI; the structure-aware .qcnn targets run the whole model
# (fast and exact, forced tables, 2 threads, batch 3, outputs=, predict)
COUNTS = {"qcnn-struct": 400, "qcnn-header": 300, "qcnn": 200}
DEFAULT_COUNT = 120


@pytest.fixture(scope="module")
def worker():
    w = Worker(seed=11, cap=3 << 30, timeout=30)
    w._start()
    yield w
    w.close()


def test_every_target_fails_cleanly(worker):
    bad = {}
    for target in worker.targets:
        for i in range(COUNTS.get(target, DEFAULT_COUNT)):
            r = worker.run(target, i)
            if r not in ("ok", "error"):
                bad.setdefault(target, []).append((i, r))
    assert not bad, bad
    assert worker.cap == 0 or worker.peak_rss < worker.cap


@pytest.mark.parametrize("body,want", [
    ("import os, sys; sys.stdin.readline(); os.abort()", "crash: exit -6"),
    ("import sys, time; sys.stdin.readline(); time.sleep(60)", "hang")])
def test_harness_reports_crashes_and_hangs(body, want):
    """The harness itself: a worker that dies or stops answering is counted, not hidden."""
    import subprocess
    import sys
    w = Worker(timeout=2)
    w.proc = subprocess.Popen([sys.executable, "-c", body], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert w.run("bin", 0) == want
    assert w.proc is None


def test_real_alexnet_as_a_seed(alexnet_qcnn):
    """Structure-aware mutations of the real AlexNet (packed from ../shared), run
    through the whole path: large legal values on a real graph and real tensors."""
    w = Worker(seed=12, cap=3 << 30, timeout=60, alexnet=alexnet_qcnn)
    try:
        w._start()
        assert "qcnn-alexnet" in w.targets
        bad = [(i, r) for i in range(30) for r in [w.run("qcnn-alexnet", i)]
               if r not in ("ok", "error")]
    finally:
        w.close()
    assert not bad, bad
