"""The guest image (`middlebox build`) and the VM (`middlebox boot`) under QEMU.

Frames go in and out of a booted VM over loopback UDP (QEMU's socket
netdev) and, for real Linux sockets on each side, through TAPs inside
network namespaces the tests create. Expected output is built with scapy
from the graph's documented semantics. Every QEMU is killed by its own PID
and every namespace deleted in fixtures and finally blocks.
"""

import os
import pathlib
import random
import re
import shutil
import signal
import socket
import subprocess
import sys

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether

from middlebox import loader, plan
from middlebox.errors import ConfigError, RunError
from middlebox.unikernel import build, elf, netns, qemu
from udpguest import UdpVM, classifier_frames, rewritten
from vmnet import check_invariant

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLASSIFIER = ROOT / "graphs" / "classifier.yaml"
TIMEOUT = 60.0                          # generous: TCG on a loaded machine

BRIDGE = """\
name: bridge
description: every frame from a goes out of b, and back
elements:
  a_in:  {class: FromDevice, device: a}
  b_out: {class: ToDevice, device: b}
  b_in:  {class: FromDevice, device: b}
  a_out: {class: ToDevice, device: a}
connections:
  - a_in -> b_out
  - b_in -> a_out
"""


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "middlebox", *map(str, args)],
                          capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("mbcache")


@pytest.fixture(scope="module")
def classifier(cache):
    return build.build(CLASSIFIER, cache=cache)


@pytest.fixture(scope="module")
def bridge(cache, tmp_path_factory):
    path = tmp_path_factory.mktemp("graphs") / "bridge.yaml"
    path.write_text(BRIDGE)
    return build.build(path, cache=cache)


parse_stats = qemu.parse_stats


# --- the image -----------------------------------------------------------------

def test_image_is_a_pvh_elf_holding_the_plan(classifier):
    img = elf.read(classifier.path)
    notes = [s for s in img.segments if s["type"] == elf.PT_NOTE]
    assert len(notes) == 1 and notes[0]["align"] == 4 and notes[0]["offset"] % 4 == 0
    loads = [s for s in img.segments if s["type"] == elf.PT_LOAD]
    assert any(s["paddr"] <= img.pvh_entry < s["paddr"] + s["filesz"] and s["flags"] & 1
               for s in loads), "PVH entry must be in an executable loaded segment"
    assert min(s["paddr"] for s in loads) >= 0x100000
    expected = plan.compile(loader.load(str(CLASSIFIER)))
    assert img.section(".mbplan") == expected
    assert classifier.size == os.path.getsize(classifier.path) < 256 * 1024
    assert img.memory_size() < 1 << 20


def test_image_links_only_the_kernels_its_plan_uses(classifier):
    nm = shutil.which("nm")
    out = subprocess.run([nm, classifier.full], capture_output=True, text=True, check=True)
    linked = set(re.findall(r" mb_kernel_(\w+)$", out.stdout, re.M))
    graph = loader.load(str(CLASSIFIER))
    assert linked == {e.kernel for e in graph.elements.values()}
    assert "mb_kernel_python" not in out.stdout
    # the guest does not use libc: nothing is left undefined
    undef = subprocess.run([nm, "-u", classifier.full], capture_output=True, text=True)
    assert undef.stdout.strip() == ""


def _engine_layout(tmp_path):
    """Offsets the C compiler gives the engine's structures (independent of
    the build's code): elems in mb_engine, size of mb_elem, k and name in it."""
    src = tmp_path / "layout.c"
    src.write_text('#include <stdio.h>\n#include <stddef.h>\n#include "engine.h"\n'
                   'int main(void) { printf("%zu %zu %zu %zu %zu", '
                   'offsetof(struct mb_engine, nelem), offsetof(struct mb_engine, elems), '
                   'sizeof(struct mb_elem), offsetof(struct mb_elem, k), '
                   'offsetof(struct mb_elem, name)); return 0; }\n')
    exe = tmp_path / "layout"
    subprocess.run(["gcc", "-I", str(ROOT / "runtime"), str(src), "-o", str(exe)], check=True)
    return [int(x) for x in subprocess.run([str(exe)], capture_output=True, text=True,
                                           check=True).stdout.split()]


def test_image_carries_its_engine_made_at_build_time(classifier, tmp_path):
    """The engine is laid out and its kernels initialised on the host at build
    time, for the address the guest's arena is linked at: the image loads it
    ready, bound to the guest's own kernels, and holds no plan parser."""
    img = elf.read(classifier.full)
    sym = img.symbols()
    assert "mb_engine_init" not in sym and "mb_engine_size" not in sym
    o_nelem, o_elems, elem_size, o_k, o_name = _engine_layout(tmp_path)
    arena = sym["mb_arena"]
    u32 = lambda a: int.from_bytes(img.read_at(a, 4), "little")     # noqa: E731
    u64 = lambda a: int.from_bytes(img.read_at(a, 8), "little")     # noqa: E731
    order = classifier.plan.order
    assert u32(arena + o_nelem) == len(order)
    elems = u64(arena + o_elems)
    assert arena < elems < sym["__image_end"]
    graph = loader.load(str(CLASSIFIER))
    for i, name in enumerate(order):
        e = elems + i * elem_size
        assert u64(e + o_k) == sym[f"mb_kernel_{graph.elements[name].kernel}"], name
        at = u64(e + o_name)
        assert img.read_at(at, len(name) + 1) == name.encode() + b"\0"
    # Only the engine's non-zero pages are stored, each at its place.
    assert build._page_runs(bytes(5000) + b"\1" + bytes(9000) + b"\2") == [(4096, 4096),
                                                                          (12288, 1714)]


FAKE_TABLE = r"""
#include "mb.h"
extern const struct mb_kernel mb_kernel_from_device, mb_kernel_to_device, mb_kernel_counter;
static int marker;
static uint32_t leaky_size(const uint8_t *cfg, uint32_t len) { (void)cfg; (void)len; return 16; }
static int leaky_init(struct mb_elem *e) { *(int **)e->state = &marker; return 0; }
static void leaky_push(struct mb_elem *e, struct mb_packet **p, uint32_t n) { mb_drop_batch(e, p, n); }
static const struct mb_kernel leaky = {.name = "counter", .state_size = leaky_size,
                                       .init = leaky_init, .push = leaky_push};
const struct mb_kernel *const mb_kernels[] = {%s, &mb_kernel_from_device, &mb_kernel_to_device};
const uint32_t mb_nkernels = 3;
"""


def test_arena_tool_refuses_kernel_state_pointing_outside_the_engine(cache, tmp_path):
    """unikernel/arena.c with this graph's plan and kernels makes the engine;
    with a Counter kernel whose state points at the tool's own data it
    refuses, naming the element: such a pointer would mean nothing in the
    guest."""
    g = tmp_path / "count.yaml"
    g.write_text("name: count\nelements:\n  lan: {class: FromDevice, device: lan}\n"
                 "  tally: {class: Counter}\n  wan: {class: ToDevice, device: wan}\n"
                 "connections: [lan -> tally -> wan]\n")
    built = build.build(g, cache=cache)
    gen = pathlib.Path(built.full).parent / "src"
    results = {}
    for name, counter in (("honest", "&mb_kernel_counter"), ("leaky", "&leaky")):
        table = tmp_path / f"{name}.c"
        table.write_text(FAKE_TABLE % counter)
        exe = tmp_path / name
        subprocess.run(["gcc", "-fPIE", "-pie", "-I", str(ROOT / "runtime"), "-I",
                        str(ROOT / "unikernel"), str(ROOT / "unikernel" / "arena.c"),
                        str(ROOT / "runtime" / "engine.c"), str(table), str(gen / "plan.c"),
                        str(ROOT / "elements" / "devices.c"), str(ROOT / "elements" / "standard.c"),
                        "-o", str(exe)], check=True, capture_output=True)
        out = tmp_path / f"{name}.bin"
        results[name] = subprocess.run([str(exe), "0x40000000", "0x50000000", str(out), "0x1",
                                        "0x2", "0x3"], capture_output=True, text=True)
        results[name].out = out
    assert results["honest"].returncode == 0 and results["honest"].out.stat().st_size > 0
    assert results["leaky"].returncode == 1 and not results["leaky"].out.exists()
    assert ("element 'tally': its kernel state holds a pointer outside the engine"
            in results["leaky"].stderr)


def test_build_is_cached_per_plan(cache, tmp_path):
    first = build.build(CLASSIFIER, tmp_path / "a.elf", cache=cache)
    again = build.build(CLASSIFIER, tmp_path / "b.elf", cache=cache)
    assert again.cached
    assert (tmp_path / "a.elf").read_bytes() == (tmp_path / "b.elf").read_bytes()
    g = (tmp_path / "g.yaml")
    g.write_text(CLASSIFIER.read_text().replace("02:00:00:00:00:fe", "02:00:00:00:00:fd"))
    other = build.build(g, tmp_path / "c.elf", cache=cache)
    assert not other.cached and first.path != other.path
    assert (tmp_path / "c.elf").read_bytes() != (tmp_path / "a.elf").read_bytes()


def test_build_cli_writes_the_image(tmp_path):
    out = tmp_path / "fw.elf"
    r = cli("build", CLASSIFIER, "-o", out, env={**os.environ, "MIDDLEBOX_CACHE": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert out.exists() and elf.read(out).pvh_entry
    assert r.stdout.startswith(f"{out}: graph 'classifier',")
    assert "kernels: classifier, counter, discard, ether_rewrite, from_device, to_device" in r.stdout


def test_build_refuses_python_elements_naming_them(tmp_path):
    (tmp_path / "pyel.py").write_text(
        "from middlebox import PythonElement\n"
        "class Swap(PythonElement):\n"
        "    def process(self, batch):\n"
        "        return [(0, p) for p in batch]\n")
    g = tmp_path / "g.yaml"
    g.write_text("elements:\n  lan: {class: FromDevice, device: lan}\n"
                 "  swap: {class: pyel.Swap}\n  swap2: {class: pyel.Swap}\n"
                 "  wan: {class: ToDevice, device: wan}\n"
                 "connections: [lan -> swap -> swap2 -> wan]\n")
    r = cli("build", g, "-o", tmp_path / "x.elf")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Python elements cannot run in a VM" in r.stderr
    assert "'swap' (Swap)" in r.stderr and "'swap2' (Swap)" in r.stderr
    assert not (tmp_path / "x.elf").exists()
    with pytest.raises(ConfigError, match="'swap' \\(Swap\\)"):
        build.build(g, cache=tmp_path)


def test_build_refuses_pcap_devices(tmp_path):
    g = tmp_path / "g.yaml"
    g.write_text("elements:\n  lan: {class: FromDevice, device: lan}\n"
                 "  cap: {class: ToPcap, file: out.pcap}\n"
                 "connections: [lan -> cap]\n")
    r = cli("build", g, "-o", tmp_path / "x.elf")
    assert r.returncode == 2 and "FromPcap/ToPcap" in r.stderr and "out.pcap" in r.stderr


# --- boot: the command line -------------------------------------------------------

def test_boot_dry_run_prints_the_qemu_command(classifier):
    r = cli("boot", classifier.path, "--nic", "wan=tap:tap1", "--nic",
            "lan=socket:udp=127.0.0.1:5001,localaddr=127.0.0.1:5000,mac=52:54:00:00:00:07",
            "--accel", "tcg", "--mem", "32M", "--dry-run")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert len(line.splitlines()) == 1 and line.startswith("qemu-system-x86_64 ")
    for part in ["-M microvm,x-option-roms=off,pit=off,pic=off,rtc=off,acpi=off",
                 "-accel tcg", "-m 32M", "-nodefaults", "-no-user-config", "-nographic",
                 "-serial stdio", f"-kernel {classifier.path}",
                 "-global virtio-mmio.force-legacy=false",
                 "-device isa-debug-exit,iobase=0xf4,iosize=4",
                 "-netdev socket,id=n0,udp=127.0.0.1:5001,localaddr=127.0.0.1:5000",
                 "-device virtio-net-device,netdev=n0,bus=virtio-mmio-bus.0,mac=52:54:00:00:00:07",
                 "-netdev tap,id=n1,ifname=tap1,script=no,downscript=no",
                 "-device virtio-net-device,netdev=n1,bus=virtio-mmio-bus.1"]:
        assert part in line
    # NICs follow the plan's device order (lan, then wan), not the order given
    assert line.index("netdev=n0") < line.index("netdev=n1")


def test_boot_vhost_user_shares_guest_memory(classifier):
    r = cli("boot", classifier.path, "--nic", "lan=vhost-user:/tmp/vu.sock", "--nic",
            "wan=user", "--accel", "tcg", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "-chardev socket,id=c0,path=/tmp/vu.sock -netdev vhost-user,id=n0,chardev=c0" in r.stdout
    assert "memory-backend-memfd,id=mem,size=16M,share=on" in r.stdout


@pytest.mark.parametrize("nics, message", [
    (["lan=tap:tap0"], "device 'wan' is not bound"),
    (["lan=tap:tap0", "wan=tap:tap1", "dmz=tap:tap2"], "the graph has no device 'dmz'"),
    (["lan=tap:tap0", "lan=tap:tap1", "wan=tap:x"], "--nic lan: device bound twice"),
    (["lan=tap0", "wan=tap:tap1"], "unknown backend 'tap0'"),
    (["lan", "wan=tap:tap1"], "--nic expects DEV=SPEC"),
    (["lan=tap:", "wan=tap:tap1"], "tap needs an interface name"),
])
def test_boot_rejects_bad_nic_bindings(classifier, nics, message):
    args = ["boot", classifier.path, "--dry-run"]
    for n in nics:
        args += ["--nic", n]
    r = cli(*args)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.splitlines()) == 1


def test_boot_refuses_what_is_not_a_guest_image(tmp_path):
    f = tmp_path / "x.elf"
    f.write_bytes(b"\x7fELF" + bytes(100))
    r = cli("boot", f, "--nic", "lan=user", "--dry-run")
    assert r.returncode == 2 and "not a 64-bit little-endian ELF" in r.stderr
    r = cli("boot", tmp_path / "missing.elf", "--nic", "lan=user", "--dry-run")
    assert r.returncode == 2 and "no such file" in r.stderr
    r = cli("boot", "/bin/true", "--nic", "lan=user", "--dry-run")
    assert r.returncode == 2 and "not a middlebox guest image" in r.stderr


def test_accel_auto_uses_kvm_only_with_hardware_virtualization():
    with open("/proc/cpuinfo") as f:
        hw = any(w in ("vmx", "svm") for ln in f if ln.startswith("flags") for w in ln.split())
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
        kvm = True
    except OSError:
        kvm = False
    assert qemu.choose_accel("auto") == ("kvm" if hw and kvm else "tcg")
    assert qemu.choose_accel("tcg") == "tcg" and qemu.choose_accel("kvm") == "kvm"
    with pytest.raises(ConfigError):
        qemu.choose_accel("hvf")
    assert qemu.parse_mem("16M") == 16 and qemu.parse_mem("1G") == 1024
    with pytest.raises(ConfigError):
        qemu.parse_mem("16k")


# --- boot: the VM ------------------------------------------------------------------

def test_vm_forwards_as_the_classifier_graph_says(classifier):
    frames = classifier_frames()
    with UdpVM(classifier.path, ["lan", "wan"]) as vm:
        name, us, _ = vm.guest.wait_ready(TIMEOUT)
        assert name == "classifier" and 0 < us < 10_000_000
        for f, _ in frames:
            vm.send("lan", f)
        expected = [rewritten(f) for f, fwd in frames if fwd]
        got = vm.recv("wan", len(expected), timeout=TIMEOUT)
        assert got == expected                      # byte for byte, in order
        assert vm.quiet("wan") == [] and vm.quiet("lan", 0.05) == []
        els, devs = parse_stats(vm.guest.command("stats"))
    assert els["ipv4"]["other"]["count"] == "4" and els["ipv6"]["other"]["count"] == "2"
    assert els["arp_req"]["in"] == 1 and els["arp_rep"]["in"] == 1
    assert els["other"]["in"] == 2                  # LLDP and the VLAN frame
    assert els["drop"]["dropped"] == 4
    assert els["wan"]["out"] == len(expected) and els["lan"]["class"] == "FromDevice"
    assert els["cls"]["other"]["ports"] == "1/1/4/2/2"
    assert devs == {"lan": (len(frames), 0, 0), "wan": (0, 0, len(expected))}
    check_invariant(els)


def test_vm_survives_hostile_frames(classifier):
    rnd = random.Random(6)
    good = Ether() / IP(dst="10.0.1.1") / UDP() / b"ok"
    hostile = [
        bytes(good)[:15],                                       # cut inside IPv4: still 0800
        b"\x01",                                                # one byte
        bytes(13),                                              # no EtherType
        bytes(Ether() / IP() / UDP() / bytes(1958)),            # 2000: one buffer, too big
        bytes(Ether() / IP() / UDP() / bytes(2958)),            # 3000: two buffers
        bytes(Ether() / IP() / UDP() / bytes(8958)),            # 9000: five buffers
    ] + [bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 1600))) for _ in range(40)]
    with UdpVM(classifier.path, ["lan", "wan"]) as vm:
        vm.guest.wait_ready(TIMEOUT)
        for f in hostile:
            vm.send("lan", f)
        vm.send("lan", good)
        fits = [f for f in hostile if len(f) <= 1920]
        expected = [rewritten(f) for f in fits if len(f) >= 14 and f[12:14] in (b"\x08\x00", b"\x86\xdd")]
        expected.append(rewritten(good))
        got = vm.recv("wan", len(expected), timeout=TIMEOUT)
        assert got == expected
        lines = vm.guest.command("stats")
        els, devs = parse_stats(lines)
        virtio = next(ln for ln in lines if ln.startswith("  virtio:") and "oversize 3," in ln)
        assert "bad 0," in virtio
        # the VM keeps working after all that
        vm.send("lan", good)
        assert vm.recv("wan", 1, timeout=TIMEOUT) == [rewritten(good)]
    assert els["lan"]["in"] == len(fits) + 1
    assert devs["lan"] == (len(fits) + 1, 3, 0)
    check_invariant(els)


def test_console_quit_prints_counters_and_powers_off(classifier):
    with UdpVM(classifier.path, ["lan", "wan"]) as vm:
        vm.guest.wait_ready(TIMEOUT)
        vm.send("lan", Ether() / IP() / UDP())
        assert len(vm.recv("wan", 1, timeout=TIMEOUT)) == 1
        rc = vm.guest.quit(TIMEOUT)
        lines = vm.guest.quit_lines
    assert rc == 1                  # isa-debug-exit: (0 << 1) | 1, a clean power-off
    els, devs = parse_stats(lines)
    assert els["ipv4"]["other"]["count"] == "1" and devs["wan"][2] == 1
    assert re.match(r"middlebox: halted after \d+ ms", lines[-1])


def test_console_info_help_and_unknown_commands(classifier):
    with UdpVM(classifier.path, ["lan", "wan"]) as vm:
        vm.guest.wait_ready(TIMEOUT)
        info = vm.guest.command("info")
        helptext = vm.guest.command("help")
        bad = vm.guest.command("frobnicate")
    assert any(re.match(r"device lan: virtio-net at feb00000 \(virtio 1\.x, 12-byte header", ln)
               for ln in info)
    assert any(ln.startswith("device wan: virtio-net at feb00200") for ln in info)
    mem = next(ln for ln in info if ln.startswith("memory:"))
    used = int(re.search(r"(\d+) KiB used", mem).group(1))
    assert used < 16 * 1024
    assert re.search(r"clock: TSC \d+ kHz \((cmdline|kvmclock|cpuid-4010|cpuid-15|lapic|"
                     r"lapic-refined|cpuid-16|guess)\)", info[-1])
    assert any("quit" in ln for ln in helptext)
    assert any("unknown command 'frobnicate'" in ln for ln in bad)


def test_guest_options_on_the_kernel_command_line(classifier):
    """mb.tsc_khz= sets the clock, mb.trace prints where the boot time went;
    look-alikes and malformed values are ignored. (The NICs themselves are
    found on the same command line: QEMU announces them there.)"""
    with UdpVM(classifier.path, ["lan", "wan"], append="console=ttyS0 mb.tsc_khz=1234567 mb.trace") as vm:
        vm.guest.wait_ready(TIMEOUT)
        trace = vm.guest.wait_for(r"middlebox: boot trace \(us\):(.*)", TIMEOUT).group(1).split()
        info = vm.guest.command("info")
    phases = dict(zip(trace[::2], map(int, trace[1::2])))
    assert list(phases) == ["entry", "platform", "clock-start", "console", "engine", "discover",
                            "nic0", "nic1", "clock"]
    assert "clock: TSC 1234567 kHz (cmdline)" in info[-1]
    with UdpVM(classifier.path, ["lan", "wan"], append="mb.tsc_khz=12x mb.tracer") as vm:
        vm.guest.wait_ready(TIMEOUT)
        info = vm.guest.command("info")
        text = vm.guest.console_text()
    assert "(cmdline)" not in info[-1] and "boot trace" not in text


def test_console_input_typed_before_boot_is_not_lost(classifier):
    """Commands written to the console before the guest is up wait in the
    UART (one byte at a time without FIFOs); turning the FIFOs on clears
    them, so the guest must take every waiting byte first. Written right
    after QEMU starts, long before the guest runs (if they came later they
    would go through the FIFOs: the test would pass either way)."""
    with UdpVM(classifier.path, ["lan", "wan"]) as vm:
        vm.guest.send("help\ninfo\n")
        vm.guest.wait_ready(TIMEOUT)
        m = vm.guest.wait_for(r"^commands: |^unknown command", TIMEOUT)
        assert m.group(0) == "commands: ", vm.guest.console_text()
        m = vm.guest.wait_for(r"^memory: |^unknown command", TIMEOUT)
        assert m.group(0) == "memory: ", vm.guest.console_text()


def test_boot_cli_runs_the_vm_until_quit(classifier):
    cmd = [sys.executable, "-m", "middlebox", "boot", classifier.path, "--nic", "lan=user",
           "--nic", "wan=user", "--accel", "tcg"]
    # its own session: QEMU (the command's child) goes with it if it hangs
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate("stats\rquit\r", timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 0, err
    assert re.search(r"middlebox: classifier ready in \d+ us", out)
    assert "middlebox: halted" in out
    assert err.startswith(f"booting {classifier.path}: tcg")


# --- TAP devices in network namespaces: real stacks on both sides -----------------------

@pytest.fixture
def two_namespaces():
    spaces = []
    try:
        for side in ("a", "b"):
            ns = netns.Namespace(side, prefix="mbtest")
            try:
                ns.__enter__()
            except netns.NamespaceError as e:
                pytest.skip(f"the kernel refused a network namespace: {e}")
            spaces.append(ns)
        try:
            fds = (spaces[0].tap("mbtap0", "10.199.0.1/24"),
                   spaces[1].tap("mbtap1", "10.199.0.2/24"))
        except (netns.NamespaceError, OSError) as e:
            pytest.skip(f"the kernel refused a TAP device in a namespace: {e}")
        yield spaces[0], spaces[1], fds
    finally:
        for ns in spaces:
            ns.close()


def test_tap_namespaces_talk_through_the_vm(bridge, two_namespaces):
    a, b, (fa, fb) = two_namespaces
    cmd = qemu.command(bridge.path, [("a", f"tap:fd={fa}"), ("b", f"tap:fd={fb}")], "tcg")
    with qemu.Guest(cmd, pass_fds=(fa, fb)) as g:
        g.wait_ready(TIMEOUT)
        # UDP both ways (the first datagram also carries ARP through the VM)
        srv = b.socket(socket.AF_INET, socket.SOCK_DGRAM)
        cli_ = a.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            srv.bind(("10.199.0.2", 7777))
            srv.settimeout(TIMEOUT)
            cli_.settimeout(TIMEOUT)
            cli_.sendto(b"ping", ("10.199.0.2", 7777))
            data, peer = srv.recvfrom(100)
            assert data == b"ping" and peer[0] == "10.199.0.1"
            srv.sendto(b"pong", peer)
            assert cli_.recvfrom(100) == (b"pong", ("10.199.0.2", 7777))
        finally:
            srv.close()
            cli_.close()
        # TCP: 200 KB one way, an echo of it back
        listener = b.socket(socket.AF_INET, socket.SOCK_STREAM)
        conn = a.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind(("10.199.0.2", 8080))
            listener.listen(1)
            conn.settimeout(TIMEOUT)
            conn.connect(("10.199.0.2", 8080))
            server_side, _ = listener.accept()
            server_side.settimeout(TIMEOUT)
            blob = bytes(random.Random(1).getrandbits(8) for _ in range(200_000))
            conn.sendall(blob)
            got = b""
            while len(got) < len(blob):
                chunk = server_side.recv(65536)
                assert chunk
                got += chunk
            assert got == blob
            server_side.sendall(got[:1000])
            back = b""
            while len(back) < 1000:
                back += conn.recv(65536)
            assert back == blob[:1000]
            server_side.close()
        finally:
            conn.close()
            listener.close()
        els, devs = parse_stats(g.command("stats"))
    assert els["a_in"]["in"] == els["b_out"]["out"] > 100
    assert els["b_in"]["in"] == els["a_out"]["out"] > 10
    assert devs["a"][1] == 0 and devs["b"][1] == 0


def test_vm_drives_legacy_virtio_mmio_too(classifier):
    with UdpVM(classifier.path, ["lan", "wan"]) as vm:
        vm.guest.kill()
        cmd = [c.replace("force-legacy=false", "force-legacy=true") for c in vm.cmd]
        vm.guest = qemu.Guest(cmd)
        vm.guest.wait_ready(TIMEOUT)
        frames = [Ether() / IP(dst="10.0.1.%d" % i) / UDP() / bytes(i) for i in range(1, 40)]
        frames.append(Ether() / ARP())
        for f in frames:
            vm.send("lan", f)
        got = vm.recv("wan", 39, timeout=TIMEOUT)
        assert got == [rewritten(f) for f in frames[:39]]
        info = vm.guest.command("info")
    assert any(re.match(r"device lan: virtio-net at feb00000 \(legacy, 12-byte header", ln)
               for ln in info)


def test_vm_without_enough_memory_says_so(classifier):
    with UdpVM(classifier.path, ["lan", "wan"]) as vm:
        vm.guest.kill()
        cmd = [c.replace("16M", "3M") for c in vm.cmd]
        vm.guest = qemu.Guest(cmd)
        m = vm.guest.wait_for(r"middlebox: error: (.*)", TIMEOUT)
        assert "give the VM more with --mem" in m.group(1)
        assert vm.guest.proc.wait(timeout=TIMEOUT) == 3     # isa-debug-exit (1 << 1) | 1


def test_vm_gets_the_memory_its_plan_needs(cache, tmp_path):
    """A Queue of 16000 packets needs a pool of as many buffers (over 32 MiB):
    the image says so, boot gives it that much, and the queue forwards."""
    g = tmp_path / "queue.yaml"
    g.write_text("name: bigqueue\nelements:\n  lan: {class: FromDevice, device: lan}\n"
                 "  q: {class: Queue, capacity: 16000}\n  wan: {class: ToDevice, device: wan}\n"
                 "connections: [lan -> q -> wan]\n")
    built = build.build(g, cache=cache)
    assert built.memory["min_mib"] > 32
    assert built.memory["engine_bytes"] > 16000 * 2048
    assert qemu.image_memory(built.path) == built.memory["min_mib"]
    r = cli("boot", built.path, "--nic", "lan=user", "--nic", "wan=user", "--dry-run")
    assert f"-m {built.memory['min_mib']}M " in r.stdout
    with UdpVM(built.path, ["lan", "wan"]) as vm:
        vm.guest.wait_ready(TIMEOUT)
        frames = [Ether() / IP(dst="10.1.0.%d" % i) / UDP() for i in range(100)]
        for f in frames:
            vm.send("lan", f)
        assert vm.recv("wan", 100, timeout=TIMEOUT) == [bytes(f) for f in frames]
        info = vm.guest.command("info")
    used, ram = map(int, re.search(r"memory: (\d+) KiB used of (\d+) KiB",
                                   "\n".join(info)).groups())
    assert used * 1024 <= built.memory["needed_bytes"] + 64 * 1024 and used < ram


def test_handlers_over_the_console(classifier):
    """Counter's reset write handler, and generic read handlers, in the VM."""
    with UdpVM(classifier.path, ["lan", "wan"], plan=classifier.plan) as vm:
        g = vm.guest
        g.wait_ready(TIMEOUT)
        for i in range(3):
            vm.send("lan", Ether() / IP() / UDP() / bytes(i))
        assert len(vm.recv("wan", 3, timeout=TIMEOUT)) == 3
        assert g.read("ipv4.count") == "3" and g.read("ipv4.byte_count") == str(3 * 42 + 3)
        assert g.read("cls.ports") == "0 0 3 0 0" and g.read("rewrite.class") == "EtherRewrite"
        g.write("ipv4.reset")
        assert g.read("ipv4.count") == "0" and g.read("ipv4.in") == "3"
        with pytest.raises(RunError, match="element 'cls': no write handler 'reset'"):
            g.write("cls.reset")
        with pytest.raises(RunError, match="no element 'nope'"):
            g.read("nope.count")
        assert g.command("control 99 00", until="^control: ")[-1] == \
            "control: error: no such element"
        assert g.command("control 1 0g", until="^control: ")[-1].startswith(
            "control: error: the message must be hex")
        assert g.command("control 1 00", until="^control: ")[-1] == \
            "control: error: cls: has no write handlers"
        assert g.command("query 1 0", until="^query: ")[-1] == "query: "
        assert g.command("query x", until="^query: ")[-1].startswith("query: error")
        # the VM still forwards
        vm.send("lan", Ether() / IP() / UDP())
        assert len(vm.recv("wan", 1, timeout=TIMEOUT)) == 1


def test_load_balancer_backends_change_in_the_vm(cache, tmp_path):
    g = tmp_path / "lb.yaml"
    g.write_text(
        "name: lbtest\nelements:\n  cin: {class: FromDevice, device: client}\n"
        "  lb: {class: LoadBalancer, vip: 10.0.0.100, port: 80, table_size: 4099,\n"
        "       backends: [10.0.1.1, 10.0.1.2, 10.0.1.3]}\n"
        "  sout: {class: ToDevice, device: servers}\n"
        "  sin: {class: FromDevice, device: servers}\n"
        "  cout: {class: ToDevice, device: client}\n"
        "connections:\n  - cin -> lb -> sout\n  - sin -> [1]lb\n  - lb[1] -> cout\n")
    built = build.build(g, cache=cache)
    with UdpVM(built.path, ["client", "servers"], plan=built.plan) as vm:
        vm.guest.wait_ready(TIMEOUT)
        assert vm.guest.read("lb.backends") == "10.0.1.1:80, 10.0.1.2:80, 10.0.1.3:80"
        vm.guest.write("lb.backends", "10.0.1.7, 10.0.1.8:8080 weight 2")
        assert vm.guest.read("lb.backends") == "10.0.1.7:80, 10.0.1.8:8080 weight 2"
        assert vm.guest.read("lb.connections") == "0"
        with pytest.raises(RunError, match="element 'lb': backends:"):
            vm.guest.write("lb.backends", "not an address")
