"""Build a graph into a bootable guest image (`middlebox build`).

The image is an x86-64 ELF with a PVH entry: the guest runtime in this
folder, the shared engine (runtime/engine.c), only the element kernels the
graph uses, a kernel table listing just those, the graph's plan in
section `.mbplan`, and the engine itself, made on the host at build time by
arena.c and loaded with the image. gcc and ld from Debian are all it needs.

Objects are cached by the hash of their source and flags, images by the
hash of everything that goes into them, under $MIDDLEBOX_CACHE or
~/.cache/middlebox, so building a graph again is instant and building a
new graph recompiles only its generated files.
"""

import concurrent.futures
import glob
import hashlib
import json
import os
import pathlib
import shutil
import subprocess

from middlebox.errors import ConfigError, RunError

HERE = pathlib.Path(__file__).resolve().parent
ROOT_RUNTIME = HERE.parent / "runtime"
ROOT_ELEMENTS = HERE.parent / "elements"

# Guest runtime sources, in link order (boot.S first: the entry point).
GUEST_SOURCES = ["boot.S", "main.c", "platform.c", "console.c", "clock.c", "virtio.c",
                 "virtio_mmio.c", "virtio_pci.c", "virtio_net.c", "libc.c"]
# No SSE anywhere (-mgeneral-regs-only): under TCG vector code is slow to
# translate and to run (and the boot path is mostly translation), and a
# software KVM such as kvm_pvm emulates instructions, which it cannot do for
# most SSE ones. The small code model: the image is linked at 1 MiB.
CFLAGS = ["-std=gnu11", "-O2", "-ffreestanding", "-fno-pic", "-fno-pie", "-mno-red-zone",
          "-mgeneral-regs-only",
          "-mcmodel=small", "-fno-stack-protector", "-fno-asynchronous-unwind-tables",
          "-fcf-protection=none", "-fno-strict-aliasing", "-ffunction-sections",
          "-fdata-sections", "-Wall", "-Wextra"]
# libc.c must not have its loops turned back into calls to memcpy/memset.
LIBC_FLAGS = ["-fno-builtin", "-fno-tree-loop-distribute-patterns"]
# RAM one NIC takes (virtio_net.c: 256-entry receive and transmit rings of
# three pages each, 256 receive buffers of 2048 bytes, 256 transmit buffers
# of 12 + 2048 bytes rounded to 64, the free list, alignment).
NIC_BYTES = 2 * 3 * 4096 + 256 * 2048 + 256 * 2112 + 256 * 2 + 256 + 4 * 64
PAGE = 4096
LDFLAGS = ["-nostdlib", "-static", "-z", "max-page-size=4096", "-z", "noexecstack",
           "--gc-sections", "--build-id=none",
           # Roots for --gc-sections: the guest's code reaches kernels only
           # through the engine, which is data made after the first link.
           "--undefined=mb_kernels", "--undefined=mb_nkernels"]


class Built:
    """Result of a build: where the image is and what is in it."""

    def __init__(self, path, plan, kernels, cached, full, memory):
        self.path = path            # the image (stripped)
        self.full = full            # the same image with symbols, for debugging
        self.plan = plan            # middlebox.plan.Plan
        self.kernels = kernels      # kernel names linked in
        self.cached = cached
        self.memory = memory        # {"min_mib": guest RAM to boot with, ...}
        self.size = os.path.getsize(path)


def cache_dir():
    base = os.environ.get("MIDDLEBOX_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "middlebox")
    return pathlib.Path(base) / "unikernel"


def _tool(name):
    path = shutil.which(name)
    if not path:
        raise RunError(f"'{name}' is not installed (apt-get install gcc binutils)")
    return path


def check_graph(graph):
    """Refuse what cannot run in a VM; return the plan and kernel -> C file."""
    from middlebox import plan
    from middlebox.runtime import kernel_table

    python = [f"'{n}' ({type(e).__name__})" for n, e in graph.elements.items()
              if e.kernel == "python"]
    if python:
        raise ConfigError("build: Python elements cannot run in a VM: " + ", ".join(python),
                          graph.file)
    pcaps = [d for d in graph.devices() if d.startswith("pcap:")]
    if pcaps:
        raise ConfigError("build: a VM has no files; FromPcap/ToPcap cannot run in it: "
                          + ", ".join(p[5:] for p in pcaps), graph.file)
    p = plan.build(graph)
    declared = kernel_table.declared(sorted(glob.glob(str(ROOT_ELEMENTS / "*.c"))))
    used = sorted({graph.elements[n].kernel for n in p.order})
    missing = [f"'{n}' (kernel {graph.elements[n].kernel})" for n in p.order
               if graph.elements[n].kernel not in declared]
    if missing:
        raise ConfigError("build: no C kernel in elements/ for: " + ", ".join(missing),
                          graph.file)
    return p, {k: declared[k] for k in used}


def _c_string(text):
    out = []
    for ch in text.encode():
        out.append(chr(ch) if 0x20 <= ch < 0x7f and ch not in (0x22, 0x5c, 0x3f) else
                   f"\\{ch:03o}")
    return '"' + "".join(out) + '"'


def plan_source(p):
    """C source holding the plan bytes and the names the console prints."""
    els = p.graph.elements
    lines = ["/* Generated by middlebox build: the plan of graph "
             f"{p.graph.name!r}. */", '#include "guest.h"', "",
             f"const uint32_t mb_plan_len = {len(p.data)};",
             "const uint8_t mb_plan[] __attribute__((section(\".mbplan\"), aligned(64))) = {"]
    data = p.data
    for i in range(0, len(data), 16):
        lines.append("    " + ", ".join(f"0x{b:02x}" for b in data[i:i + 16]) + ",")
    lines.append("};")
    lines.append("const char *const mb_elem_class[] = {")
    lines += [f"    {_c_string(type(els[n]).__name__)}," for n in p.order]
    lines.append("    0,\n};")
    lines.append("const char *const mb_elem_xstats[] = {")
    lines += [f"    {_c_string(' '.join(getattr(els[n], 'xstats', ()) or ()))},"
              for n in p.order]
    lines.append("    0,\n};")
    return "\n".join(lines) + "\n"


def _hash(*parts):
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    return h.hexdigest()


def _gcc_version(gcc):
    r = subprocess.run([gcc, "-dumpfullversion"], capture_output=True, text=True)
    return r.stdout.strip()


def _compile(gcc, src, text, flags, objdir, headers):
    """Compile src (whose content is text, including `headers`, the text of
    every header it may use) to a cached object; return its path."""
    key = _hash(src.name, text, flags, headers)
    obj = objdir / f"{src.stem}-{key[:20]}.o"
    if obj.exists():
        return obj
    tmp = obj.with_suffix(f".{os.getpid()}.tmp")
    cmd = [gcc, *flags, "-I", str(ROOT_RUNTIME), "-I", str(HERE), "-c", str(src), "-o", str(tmp)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        tmp.unlink(missing_ok=True)
        msg = [ln for ln in r.stderr.splitlines() if "error" in ln] or r.stderr.splitlines()
        raise RunError(f"compiling {src.name} failed: {msg[0] if msg else r.returncode}")
    os.replace(tmp, obj)
    return obj


def _arena_tool(gcc, gendir, kernels):
    """Build arena.c for this host with the guest's engine, kernels, kernel
    table and plan; return its path."""
    exe = gendir / f"arena.{os.getpid()}"
    srcs = [HERE / "arena.c", ROOT_RUNTIME / "engine.c", gendir / "kernel_table.c",
            gendir / "plan.c", *sorted({pathlib.Path(f) for f in kernels.values()})]
    # Position-independent, so that it loads far above the guest addresses
    # it maps the engine at.
    r = subprocess.run([gcc, "-std=gnu11", "-O0", "-w", "-fPIE", "-pie", "-I", str(ROOT_RUNTIME),
                        "-I", str(HERE), *map(str, srcs), "-o", str(exe)],
                       capture_output=True, text=True)
    if r.returncode:
        lines = r.stderr.strip().splitlines()
        raise RunError(f"building the engine arena tool failed: {lines[-1] if lines else r.returncode}")
    return exe


def _run_arena(exe, *args):
    r = subprocess.run([str(exe), *args], capture_output=True, text=True)
    if r.returncode:
        raise RunError(f"the guest engine refuses this plan: {r.stderr.strip()}")
    return r.stdout


def _link(ld, objs, out, script, arena_bytes):
    cmd = [ld, *LDFLAGS, f"--defsym=MB_ARENA_SIZE={arena_bytes}", "-T", str(script),
           "-o", str(out), *map(str, objs)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        lines = r.stderr.strip().splitlines()
        raise RunError(f"linking the guest failed: {lines[-1] if lines else r.returncode}")
    from middlebox.unikernel import elf
    return elf.read(out)


def _kernel_addresses(image, sym):
    """mb_arena, mb_plan and the guest addresses in mb_kernels[], from a
    linked image and its symbols."""
    n = int.from_bytes(image.read_at(sym["mb_nkernels"], 4), "little")
    table = image.read_at(sym["mb_kernels"], 8 * n)
    return (sym["mb_arena"], sym["mb_plan"],
            [int.from_bytes(table[8 * i:8 * i + 8], "little") for i in range(n)])


def _page_runs(data):
    """(offset, length) of each run of 4 KiB pages of data holding a non-zero byte."""
    runs = []
    for off in range(0, len(data), PAGE):
        if not data[off:off + PAGE].strip(b"\0"):
            continue
        n = min(PAGE, len(data) - off)
        if runs and runs[-1][0] + runs[-1][1] == off:
            runs[-1] = (runs[-1][0], runs[-1][1] + n)
        else:
            runs.append((off, n))
    return runs


def _arena_link_files(gendir, arena_bin, runs):
    """The assembly that holds the engine's runs and the linker script that
    places them (guest.ld with its ARENA lines filled in)."""
    quoted = str(arena_bin).replace("\\", "\\\\").replace('"', '\\"')
    asm = "".join(f'.section .mbarena.{i},"aw",@progbits\n.incbin "{quoted}", {off}, {n}\n'
                  for i, (off, n) in enumerate(runs))
    phdrs = "".join(f"    arena{i} PT_LOAD FLAGS(6);\n" for i in range(len(runs)))
    sections = "".join(f"    .mbarena.{i} mb_arena + {off:#x} : {{ KEEP(*(.mbarena.{i})) }} :arena{i}\n"
                       for i, (off, _) in enumerate(runs))
    script = (HERE / "guest.ld").read_text()
    script = script.replace("    /* ARENA PHDRS */\n", phdrs)
    script = script.replace("    /* ARENA SECTIONS */\n", sections)
    asm_path = gendir / f"arena.{os.getpid()}.S"
    script_path = gendir / f"guest.{os.getpid()}.ld"
    asm_path.write_text(asm)
    script_path.write_text(script)
    return asm_path, script_path


def _link_with_engine(gcc, ld, gendir, kernels, objs, out, scratch):
    """Link the guest into out twice: to learn where its arena, plan and
    kernels land, then with the engine arena.c makes for those addresses.
    Returns (where the image ends, the arena's size). Files made on the way are
    appended to scratch (per process: builds may run side by side)."""
    pid = os.getpid()
    tool = _arena_tool(gcc, gendir, kernels)
    scratch.append(tool)
    engine = int(_run_arena(tool, "size"))
    first = _link(ld, objs, out, HERE / "guest.ld", engine)
    where = _kernel_addresses(first, first.symbols())
    at, plan_at, kaddrs = where
    arena_bin = gendir / f"arena.{pid}.bin"
    scratch.append(arena_bin)
    _run_arena(tool, hex(at), hex(plan_at), str(arena_bin), *map(hex, kaddrs))
    asm, script = _arena_link_files(gendir, arena_bin, _page_runs(arena_bin.read_bytes()))
    arena_obj = gendir / f"arena.{pid}.o"
    scratch += [asm, script, arena_obj]
    r = subprocess.run([gcc, "-c", str(asm), "-o", str(arena_obj)], capture_output=True,
                       text=True)
    if r.returncode:
        raise RunError(f"assembling the engine failed: {r.stderr.strip()}")
    final = _link(ld, [*objs, arena_obj], out, script, engine)
    sym = final.symbols()
    if _kernel_addresses(final, sym) != where:
        raise RunError("the guest's engine arena, plan or kernels moved between the two links")
    return sym["__image_end"], engine


def _memory(end, engine, ndev):
    """Guest RAM the image needs: the image (its engine arena included, up
    to `end`) and each NIC's rings and buffers. A dict stored in the
    image's .mbmem."""
    need = end + ndev * NIC_BYTES
    mib = max(16, -(-(need + need // 8 + (1 << 20)) // (1 << 20)))   # 1/8 and 1 MiB to spare
    return {"engine_bytes": engine, "nic_bytes": NIC_BYTES, "image_end": end,
            "needed_bytes": need, "min_mib": mib}


def build(graph, output=None, cache=None):
    """Build graph (a Graph, or a YAML path) into an image; copy it to output
    if given. Returns a Built."""
    from middlebox import loader

    if isinstance(graph, (str, os.PathLike)):
        if not os.path.exists(graph):
            raise ConfigError("no such file", str(graph))
        graph = loader.load(str(graph))
    p, kernels = check_graph(graph)
    gcc, ld = _tool("gcc"), _tool("ld")
    cache = pathlib.Path(cache) if cache else cache_dir()
    objdir = cache / "obj"
    objdir.mkdir(parents=True, exist_ok=True)

    sources = [HERE / s for s in GUEST_SOURCES] + [ROOT_RUNTIME / "engine.c"]
    sources += sorted({pathlib.Path(f) for f in kernels.values()})
    texts = {s: s.read_bytes() for s in sources}
    # every header a source may include, so a header change rebuilds
    headers = (sorted(glob.glob(str(HERE / "*.h"))) + [str(ROOT_RUNTIME / "mb.h"),
                                                       str(ROOT_RUNTIME / "engine.h")]
               + sorted(glob.glob(str(ROOT_ELEMENTS / "*.h"))))
    header_text = b"".join(pathlib.Path(h).read_bytes() for h in headers)
    from middlebox.runtime import kernel_table
    generated = {"plan.c": plan_source(p).encode(),
                 "kernel_table.c": kernel_table.table_source(kernels).encode()}
    script = (HERE / "guest.ld").read_bytes()
    version = _gcc_version(gcc)
    tool = (HERE / "arena.c").read_bytes() + pathlib.Path(__file__).read_bytes()
    key = _hash(version, CFLAGS, LIBC_FLAGS, LDFLAGS, header_text, script, tool,
                *[texts[s] for s in sources], *generated.values())
    outdir = cache / "images" / key[:24]
    image = outdir / "guest.elf"
    full = outdir / "guest.full.elf"
    cached = image.exists() and full.exists()
    if not cached:
        outdir.mkdir(parents=True, exist_ok=True)
        gendir = outdir / "src"
        gendir.mkdir(exist_ok=True)
        for name, text in generated.items():
            (gendir / name).write_bytes(text)
            texts[gendir / name] = text
            sources.append(gendir / name)
        jobs = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for s in sources:
                flags = CFLAGS + (LIBC_FLAGS if s.name == "libc.c" else [])
                jobs.append(pool.submit(_compile, gcc, s, texts[s], flags, objdir, header_text))
            objs = [j.result() for j in jobs]
        # The engine is made here, on the host, at the address the guest's
        # arena is linked at, and loaded with the image (guest.ld).
        tmp = outdir / f"guest.full.{os.getpid()}.tmp"
        scratch = []
        try:
            end, engine = _link_with_engine(gcc, ld, gendir, kernels, objs, tmp, scratch)
        finally:
            for f in scratch:
                f.unlink(missing_ok=True)
        info = outdir / "mbmem.json"
        info.write_text(json.dumps(_memory(end, engine, len(p.devices))))
        stripped = outdir / f"guest.{os.getpid()}.tmp"
        for args in (["--add-section", f".mbmem={info}", str(tmp)],
                     ["--strip-all", str(tmp), str(stripped)]):
            r = subprocess.run([_tool("objcopy"), *args], capture_output=True, text=True)
            if r.returncode:
                raise RunError(f"objcopy failed: {r.stderr.strip()}")
        os.replace(tmp, full)
        os.replace(stripped, image)
    if output:
        out = pathlib.Path(output)
        if out.parent and not out.parent.is_dir():
            raise RunError(f"cannot write {output}: no such directory")
        try:
            shutil.copyfile(image, out)
        except OSError as e:
            raise RunError(f"cannot write {output}: {e.strerror}") from None
        image = out
    memory = json.loads((outdir / "mbmem.json").read_text())
    return Built(str(image), p, sorted(kernels), cached, str(full), memory)
