"""Bounded fuzzing of every reader (tools/fuzz.py runs the long campaign): mutated
and truncated files give a result or a QEngineError, never another exception,
a crash or a hang."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qengine import QEngineError

from fuzzkit import mutate, mutate_header, seeds

READERS = ["qcnn", "qcnn-header", "bin", "cbn", "prototxt", "caffemodel", "png", "jpeg", "bmp"]
_SEEDS = {}


def seed_for(name, tmp_path_factory):
    if not _SEEDS:
        _SEEDS.update(seeds(str(tmp_path_factory.mktemp("fuzzseeds"))))
    return _SEEDS[name]


@pytest.mark.parametrize("reader", READERS)
def test_mutated_inputs_fail_cleanly(reader, tmp_path_factory):
    data, read = seed_for(reader, tmp_path_factory)
    read_dir = tmp_path_factory.mktemp(f"fuzz-{reader}")
    path = os.path.join(str(read_dir), f"input.{reader}")
    read_path = path

    @settings(max_examples=120, deadline=2000, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.integers(0, 2 ** 32 - 1), st.integers(1, 4))
    def run(seed, rounds):
        rng = np.random.default_rng(seed)
        b = data
        for _ in range(rounds):
            b = mutate_header(b, rng) if reader == "qcnn-header" else mutate(b, rng)
        with open(read_path, "wb") as f:
            f.write(b)
        try:
            read(read_path)
        except QEngineError:
            pass

    run()
