"""The build lists every kernel source and header (a header missing from
setup.py's `depends` is not rebuilt against; one missing from the sdist breaks
builds from it)."""
import ast
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_list(name):
    src = open(os.path.join(ROOT, "setup.py")).read()
    return set(ast.literal_eval(re.search(name + r" = (\[.*?\])", src, re.S).group(1)))


def test_setup_lists_every_kernel_file():
    kdir = os.path.join(ROOT, "qengine", "kernels")
    headers = {os.path.basename(p) for p in glob.glob(os.path.join(kdir, "*.h"))}
    sources = {os.path.basename(p) for p in glob.glob(os.path.join(kdir, "*.c"))}
    assert _setup_list("HEADERS") == headers
    # the SIMDe build of the AVX-512 bodies is added when SIMDe is installed
    assert _setup_list("KERNEL_FILES") | {"isa_avx512_emulated.c"} == sources


def test_manifest_takes_every_kernel_file():
    manifest = open(os.path.join(ROOT, "MANIFEST.in")).read()
    assert "recursive-include qengine/kernels *.c *.h" in manifest
    assert "include qengine/_kernels.pyx" in manifest
