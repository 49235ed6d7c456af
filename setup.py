"""Build script: the package, its console scripts and the Cython kernels."""
import os
import sys

from setuptools import Extension, setup
from Cython.Build import cythonize

KERNEL_FILES = ["qe_dispatch.c", "isa_generic.c", "isa_avx2.c", "isa_avx512.c", "conv_geom.c",
                "pool.c", "activation.c", "tensor_ops.c", "bitpack.c", "resize.c", "layout.c", "image.c",
                "topology.c"]
HEADERS = ["qe_kernels.h", "qe_isa.h", "qe_bodies.h", "qe_impl.h", "qe_q8.h", "qe_simd.h",
           "qe_conv16.h", "qe_i16.h", "qe_pw.h", "qe_wino.h"]
define_macros = []


def simde_include():
    """The folder holding simde/x86/avx512.h (Debian libsimde-dev), or None.
    With it the AVX-512 kernels are built a second time for the baseline CPU as
    the test-only instruction set "avx512-emulated"."""
    cands = [os.environ.get("QENGINE_SIMDE", ""), "/usr/include", "/usr/local/include"]
    for d in cands:
        if d and os.path.exists(os.path.join(d, "simde", "x86", "avx512.h")):
            return d
    return None


SIMDE = simde_include()
include_dirs = []
if SIMDE and os.environ.get("QENGINE_SIMDE") != "0":
    KERNEL_FILES.append("isa_avx512_emulated.c")
    define_macros.append(("QE_HAVE_SIMDE", "1"))
    if SIMDE not in ("/usr/include", "/usr/local/include"):
        include_dirs.append(SIMDE)

KERNEL_SOURCES = ["qengine/_kernels.pyx"] + [os.path.join("qengine", "kernels", f)
                                            for f in KERNEL_FILES]

# -Wno-psabi: GCC notes that vector arguments change the ABI between instruction
# sets; our vector helpers are static inline, never called across files.
# -falign-functions=64: every kernel starts on a cache line, so its loops keep
# their alignment whatever code comes before them (session 16: adding code
# elsewhere moved the fully-connected lookup's loop and ran fc6-8 0.89-0.95x;
# aligned, 1.00-1.07x of the build before)
extra_compile = ["-O3", "-std=c11", "-fno-math-errno", "-ffp-contract=fast", "-Wall", "-Wextra",
                 "-Wno-psabi", "-falign-functions=64"]
extra_link = []
if os.environ.get("QENGINE_STRICT") == "1":      # CI: a warning fails the build
    extra_compile.append("-Werror")
if os.environ.get("QENGINE_SANITIZE") == "1":    # CI: AddressSanitizer + UBSan build
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
           "-fno-omit-frame-pointer", "-g"]
    extra_compile = [f for f in extra_compile if f != "-O3"] + ["-O1"] + san
    extra_link += san
if sys.platform != "win32":
    extra_compile.append("-fopenmp")
    extra_link.append("-fopenmp")

ext = Extension(
    "qengine._kernels",
    sources=KERNEL_SOURCES,
    depends=[os.path.join("qengine", "kernels", f) for f in HEADERS],
    define_macros=define_macros,
    include_dirs=include_dirs,
    extra_compile_args=extra_compile,
    extra_link_args=extra_link,
)

setup(
    ext_modules=cythonize([ext], compiler_directives={"language_level": "3"}),
)
