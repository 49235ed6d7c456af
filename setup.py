"""Build script: the package, its console scripts and the Cython kernels."""
import os
import sys

from setuptools import Extension, setup
from Cython.Build import cythonize

KERNEL_SOURCES = ["qengine/_kernels.pyx"] + [
    os.path.join("qengine", "kernels", f)
    for f in ("qe_dispatch.c", "conv_geom.c", "pool.c", "activation.c", "bitpack.c", "resize.c",
              "layout.c", "image.c")
]

extra_compile = ["-O3", "-std=c11", "-fno-math-errno", "-ffp-contract=fast"]
extra_link = []
if sys.platform != "win32":
    extra_compile.append("-fopenmp")
    extra_link.append("-fopenmp")

ext = Extension(
    "qengine._kernels",
    sources=KERNEL_SOURCES,
    depends=[os.path.join("qengine", "kernels", f) for f in ("qe_kernels.h", "qe_impl.h")],
    extra_compile_args=extra_compile,
    extra_link_args=extra_link,
)

setup(
    ext_modules=cythonize([ext], compiler_directives={"language_level": "3"}),
)
