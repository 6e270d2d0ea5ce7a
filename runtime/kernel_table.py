"""Find the kernels that C files declare (MB_KERNEL(name)) and write the
table the engine looks kernel names up in.

The host build (setup.py) lists every kernel; the guest build lists only
the ones its plan uses. Importable without the rest of the package, so
setup.py can run it before anything is built.
"""

import pathlib
import re

_DECL = re.compile(r"^MB_KERNEL\((\w+)\)", re.M)


def declared(paths):
    """{kernel name: C file} for every MB_KERNEL in paths."""
    found = {}
    for path in paths:
        for name in _DECL.findall(pathlib.Path(path).read_text()):
            if name in found:
                raise ValueError(f"kernel {name} declared in {found[name]} and {path}")
            found[name] = str(path)
    return found


def table_source(names):
    """C source of the kernel table for these kernel names."""
    names = sorted(names)
    lines = ['#include "mb.h"', ""]
    lines += [f"extern const struct mb_kernel mb_kernel_{n};" for n in names]
    lines.append("")
    lines.append("const struct mb_kernel *const mb_kernels[] = {")
    lines += [f"    &mb_kernel_{n}," for n in names]
    if not names:
        lines.append("    0,")
    lines.append("};")
    lines.append(f"const uint32_t mb_nkernels = {len(names)};")
    return "\n".join(lines) + "\n"


def write_table(names, path):
    """Write the table, leaving the file alone if unchanged (keeps builds incremental)."""
    path = pathlib.Path(path)
    text = table_source(names)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path
