"""The engine and every kernel under AddressSanitizer and UBSan, driven by
tests/c/harness.c with hostile packets and corrupted plans; and the shared
C compiled freestanding with warnings as errors."""

import glob
import pathlib
import random
import shutil
import struct
import subprocess

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

import middlebox.elements as lib
from middlebox import loader, plan
from middlebox.runtime import kernel_table

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_C = sorted(glob.glob(str(ROOT / "elements" / "*.c"))) + [str(ROOT / "runtime" / "engine.c")]
GRAPHS = sorted(glob.glob(str(ROOT / "graphs" / "*.yaml"))) + sorted(
    glob.glob(str(ROOT / "tests" / "graphs" / "sanitize-*.yaml")))
GCC = shutil.which("gcc")


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    d = tmp_path_factory.mktemp("asan")
    kernels = kernel_table.declared(sorted(glob.glob(str(ROOT / "elements" / "*.c"))))
    table = kernel_table.write_table(kernels, d / "kernel_table.c")
    exe = d / "harness"
    cmd = [GCC, "-std=gnu11", "-O1", "-g", "-fsanitize=address,undefined",
           "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-Wall", "-Wextra", "-DMB_DEBUG",
           "-I", str(ROOT / "runtime"), str(ROOT / "tests" / "c" / "harness.c"), str(table),
           *SHARED_C, "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return exe


def hostile_packets(seed, count=600):
    """Real frames, every truncation of some, and random bytes."""
    rnd = random.Random(seed)
    real = [
        Ether() / IP(dst="10.0.0.1") / TCP(dport=80, flags="S"),
        Ether() / IP(ihl=6, options=b"\x01\x01\x01\x00") / UDP(dport=53) / (b"x" * 20),
        Ether() / IP(frag=5, flags=1) / b"fragment",
        Ether() / IPv6() / UDP(),
        Ether() / Dot1Q(vlan=5) / IP() / ICMP(),
        Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(op=1),
        Ether() / IP(len=9999, ihl=15) / b"\x00",
    ]
    out = []
    for p in real:
        b = bytes(p)
        out += [b[:n] for n in range(0, len(b) + 1)]
    while len(out) < count:
        base = bytearray(bytes(rnd.choice(real)))
        for _ in range(rnd.randint(0, 6)):
            if base:
                base[rnd.randrange(len(base))] = rnd.randrange(256)
        if rnd.random() < 0.3:
            base = bytearray(rnd.randbytes(rnd.randint(0, 1600)))
        out.append(bytes(base))
    rnd.shuffle(out)
    return out


def write_packets(path, packets, ndev):
    with open(path, "wb") as f:
        for i, p in enumerate(packets):
            f.write(struct.pack("<II", (i // 7) % max(ndev, 1), len(p)) + p)


def run(harness, plan_path, pk_path, *extra):
    return subprocess.run([str(harness), str(plan_path), str(pk_path), "--polls", "64", *extra],
                          capture_output=True, text=True, errors="replace", timeout=120)


@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: pathlib.Path(g).stem)
def test_graph_survives_hostile_packets(harness, tmp_path, graph):
    p = plan.build(loader.load(graph))
    (tmp_path / "plan").write_bytes(p.data)
    write_packets(tmp_path / "pk", hostile_packets(hash(graph) & 0xFFFF), len(p.devices))
    r = run(harness, tmp_path / "plan", tmp_path / "pk")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "runtime error" not in r.stderr and "Sanitizer" not in r.stderr
    assert r.stdout.startswith("ok")


def test_every_kernel_is_covered():
    used = set()
    for g in GRAPHS:
        used |= {e.kernel for e in loader.load(g).elements.values()}
    shared = {cls.kernel for cls in lib.catalogue().values()} - {"python"}
    assert shared - used == set(), "add these kernels to a tests/graphs/sanitize-*.yaml graph"


def test_corrupt_plans_are_refused_or_safe(harness, tmp_path):
    rnd = random.Random(7)
    write_packets(tmp_path / "pk", hostile_packets(3, 200), 2)
    outcomes = {0: 0, 4: 0}
    for g in GRAPHS:
        data = plan.build(loader.load(g)).data
        for trial in range(25):
            bad = bytearray(data)
            for _ in range(rnd.randint(1, 4)):
                i = rnd.randrange(16, len(bad))
                bad[i] = rnd.randrange(256) if rnd.random() < 0.7 else bad[i] ^ 0x80
            (tmp_path / "plan").write_bytes(bytes(bad))
            r = run(harness, tmp_path / "plan", tmp_path / "pk", "--fix-checksum")
            assert r.returncode in (0, 4), f"{g} trial {trial}: {r.stdout}{r.stderr}"
            assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr
            outcomes[r.returncode] += 1
    assert outcomes[4] > 0          # the checks do refuse some corruptions


def test_truncated_or_unchecked_plans_are_refused(harness, tmp_path):
    data = plan.build(loader.load(GRAPHS[0])).data
    write_packets(tmp_path / "pk", [b"\0" * 60], 1)
    for cut in (0, 10, 63, 64, len(data) // 2, len(data) - 1):
        (tmp_path / "plan").write_bytes(data[:cut])
        r = run(harness, tmp_path / "plan", tmp_path / "pk")
        assert r.returncode == 4, r.stdout + r.stderr
    flipped = bytearray(data)
    flipped[-1] ^= 1
    (tmp_path / "plan").write_bytes(bytes(flipped))
    r = run(harness, tmp_path / "plan", tmp_path / "pk")
    assert r.returncode == 4 and "checksum" in r.stdout


@pytest.mark.parametrize("src", SHARED_C, ids=lambda s: pathlib.Path(s).name)
def test_shared_c_is_freestanding_and_warning_free(tmp_path, src):
    """What the guest links: no libc headers, no libc calls but mem*, no warnings."""
    gcc_include = subprocess.run([GCC, "-print-file-name=include"], capture_output=True,
                                 text=True).stdout.strip()
    obj = tmp_path / "k.o"
    r = subprocess.run([GCC, "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-ffreestanding",
                        "-fno-builtin", "-nostdinc", "-isystem", gcc_include,
                        "-I", str(ROOT / "runtime"), "-c", src, "-o", str(obj)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    undefined = subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True).stdout.split()
    names = {u for u in undefined if u != "U"}
    allowed = {"memcpy", "memset", "memcmp", "memmove"}
    assert {n for n in names if not n.startswith("mb_")} <= allowed, names
