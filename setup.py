"""Builds the package `middlebox` and its host engine extension.

The top-level folders are subpackages: middlebox/ (core), elements/
(middlebox.elements), runtime/ (middlebox.runtime), unikernel/
(middlebox.unikernel). The C engine and every element kernel are compiled
into a static library with warnings on, then linked into the Cython
extension middlebox.runtime._engine.
"""

import glob
import os
import runpy

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
os.chdir(HERE)

kernel_table = runpy.run_path("runtime/kernel_table.py")
KERNEL_SOURCES = sorted(glob.glob("elements/*.c")) + ["runtime/host_kernels.c"]
kernels = kernel_table["declared"](KERNEL_SOURCES)
TABLE = kernel_table["write_table"](kernels, "build/generated/kernel_table.c").as_posix()

CFLAGS = ["-O3", "-std=gnu11", "-Wall", "-Wextra", "-fno-strict-aliasing",
          "-fvisibility=hidden"]
if os.environ.get("MIDDLEBOX_SANITIZE"):
    CFLAGS += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]

core = ("mbcore", {
    "sources": ["runtime/engine.c", TABLE] + KERNEL_SOURCES,
    "include_dirs": ["runtime"],
    "cflags": CFLAGS,
})

ext = Extension(
    "middlebox.runtime._engine",
    # live.c: host-only live-interface driver (libc, Linux headers); never
    # part of the freestanding core library.
    sources=["runtime/_engine.pyx", "runtime/live.c"],
    include_dirs=["runtime", numpy.get_include()],
    extra_compile_args=["-O3", "-Wno-unused-function"],
    depends=["runtime/mb.h", "runtime/engine.h", "runtime/live.h"] + KERNEL_SOURCES
            + sorted(glob.glob("elements/*.h")),
)

setup(
    name="middlebox",
    version="0.1.0",
    description="Network middleboxes from small packet-processing elements, "
                "run by a batched C engine on pcaps, hosts and tiny VMs.",
    python_requires=">=3.9",
    packages=["middlebox", "middlebox.elements", "middlebox.runtime", "middlebox.unikernel"],
    package_dir={
        "middlebox": "middlebox",
        "middlebox.elements": "elements",
        "middlebox.runtime": "runtime",
        "middlebox.unikernel": "unikernel",
    },
    package_data={
        "middlebox.runtime": ["*.h", "*.c", "*.pyx"],
        "middlebox.elements": ["*.c", "*.h"],
        "middlebox.unikernel": ["*.c", "*.h", "*.S", "*.ld"],
    },
    libraries=[core],
    ext_modules=cythonize([ext], language_level=3, quiet=True),
    install_requires=["numpy", "pyyaml", "networkx"],
    extras_require={"test": ["pytest", "hypothesis", "scapy"]},
    entry_points={"console_scripts": ["middlebox = middlebox.cli:main"]},
)
