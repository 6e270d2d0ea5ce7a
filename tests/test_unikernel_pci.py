"""The guest on QEMU's q35 machine: virtio-pci NICs instead of virtio-mmio.

`middlebox boot IMAGE --machine q35` boots a PC (SeaBIOS, or qboot with
--firmware qboot) whose NICs are modern virtio-net-pci devices; the guest
walks PCI configuration space, sets their BARs up and drives them with the
same virtio-net driver as on microvm. Frames go in and out over loopback
UDP (QEMU's socket netdev); expected outputs are built with scapy from the
classifier graph's documented behaviour. Every QEMU is killed by its own
PID when its test ends.
"""

import os
import pathlib
import re
import select
import signal
import subprocess
import sys
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from middlebox.errors import ConfigError
from middlebox.unikernel import build, qemu
from udpguest import UdpVM, classifier_frames, rewritten
from vmnet import check_invariant

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLASSIFIER = ROOT / "graphs" / "classifier.yaml"
LAN_MAC = "52:54:00:00:00:07"
TIMEOUT = 60.0                          # generous: TCG on a loaded machine
FOUR_GIB = 1 << 32


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "middlebox", *map(str, args)],
                          capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return build.build(CLASSIFIER, cache=tmp_path_factory.mktemp("mbcache"))


def PciVM(image, devices, **kw):
    """A q35 guest whose NICs are QEMU UDP sockets on loopback."""
    return UdpVM(image, devices, machine="q35", recv_timeout=TIMEOUT, **kw)


def nic_lines(info):
    """{device: (pci location, common configuration address, rest)} from `info`."""
    out = {}
    for ln in info:
        m = re.match(r"device (\w+): virtio-net at pci (\S+) \(([0-9a-f]+)\) \((.*)$", ln)
        if m:
            out[m.group(1)] = (m.group(2), int(m.group(3), 16), m.group(4))
    return out


def forwards(vm, count=5):
    """Send `count` IPv4 frames into lan; True when wan gives them back rewritten."""
    frames = [Ether() / IP(dst=f"10.0.1.{i}") / UDP(dport=9) / bytes(i) for i in range(count)]
    for f in frames:
        vm.send("lan", f)
    return vm.recv("wan", count) == [rewritten(f) for f in frames]


# --- the command line -------------------------------------------------------------

def test_boot_dry_run_on_q35(classifier):
    r = cli("boot", classifier.path, "--machine", "q35", "--nic", "wan=tap:tap1",
            "--nic", f"lan=socket:udp=127.0.0.1:5001,localaddr=127.0.0.1:5000,mac={LAN_MAC}",
            "--accel", "tcg", "--mem", "32M", "--dry-run")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert len(line.splitlines()) == 1 and line.startswith("qemu-system-x86_64 -M q35,")
    assert "sata=off" in line                       # SeaBIOS would spend ~10 ms on it
    for part in ["-accel tcg", "-m 32M", "-nodefaults", "-no-user-config", "-display none",
                 "-serial stdio", f"-kernel {classifier.path}",
                 "-device isa-debug-exit,iobase=0xf4,iosize=4",
                 "-netdev socket,id=n0,udp=127.0.0.1:5001,localaddr=127.0.0.1:5000",
                 "-device virtio-net-pci,netdev=n0,disable-legacy=on,romfile=,bus=pcie.0,"
                 f"addr=0x2,mac={LAN_MAC}",
                 "-netdev tap,id=n1,ifname=tap1,script=no,downscript=no",
                 "-device virtio-net-pci,netdev=n1,disable-legacy=on,romfile=,bus=pcie.0,addr=0x3"]:
        assert part in line
    # nothing of microvm's: no virtio-mmio, SeaBIOS kept off the console
    assert "virtio-mmio" not in line and "microvm" not in line and "-nographic" not in line
    assert "-bios" not in line
    assert line.index("netdev=n0") < line.index("netdev=n1")    # plan order: lan, wan


def test_boot_dry_run_firmware_choice(classifier):
    r = cli("boot", classifier.path, "--machine", "q35", "--firmware", "qboot",
            "--nic", "lan=user", "--nic", "wan=user", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert " -bios qboot.rom " in r.stdout
    r = cli("boot", classifier.path, "--nic", "lan=user", "--nic", "wan=user", "--dry-run")
    assert r.returncode == 0 and "-M microvm," in r.stdout and "virtio-net-pci" not in r.stdout
    r = cli("boot", classifier.path, "--firmware", "qboot", "--nic", "lan=user",
            "--nic", "wan=user", "--dry-run")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--firmware: only for --machine q35" in r.stderr
    r = cli("boot", classifier.path, "--machine", "pc", "--nic", "lan=user", "--dry-run")
    assert r.returncode == 2 and "--machine" in r.stderr


def test_q35_nic_limits():
    nics = [(f"d{i}", "user") for i in range(17)]
    with pytest.raises(ConfigError, match="a q35 guest has at most 16 NICs, got 17"):
        qemu.command("x.elf", nics, machine="q35", mem="16M")
    cmd = qemu.command("x.elf", nics[:16], machine="q35", mem="16M")
    assert "addr=0x11" in " ".join(cmd)                 # NIC 15 in slot 17
    with pytest.raises(ConfigError, match="a microvm guest has at most 8 NICs"):
        qemu.command("x.elf", nics[:9], mem="16M")
    with pytest.raises(ConfigError, match="--machine: expected microvm or q35, got 'pc'"):
        qemu.command("x.elf", nics[:1], machine="pc", mem="16M")


# --- the VM ---------------------------------------------------------------------------

def test_q35_forwards_as_the_classifier_graph_says(classifier):
    frames = classifier_frames()
    hostile = [b"\x01",                                              # one byte
               bytes(Ether() / IP(dst="10.0.1.9") / UDP() / bytes(1958)),   # 2000: too big
               bytes(Ether() / IP(dst="10.0.1.9") / UDP() / bytes(2958))]   # 3000: two buffers
    with PciVM(classifier.path, ["lan", "wan"], macs={"lan": LAN_MAC}) as vm:
        name, us, _ = vm.guest.wait_ready(TIMEOUT)
        assert name == "classifier" and 0 < us < 10_000_000
        for f, _ in frames:
            vm.send("lan", f)
        for f in hostile:
            vm.send("lan", f)
        expected = [rewritten(f) for f, fwd in frames if fwd]
        assert vm.recv("wan", len(expected)) == expected       # byte for byte, in order
        assert vm.quiet("wan") == [] and vm.quiet("lan", 0.05) == []
        info = vm.guest.command("info")
        stats = vm.guest.command("stats")
        # the VM keeps working after the hostile frames
        last = Ether() / IPv6(dst="fd00::1") / UDP() / b"after"
        vm.send("lan", last)
        assert vm.recv("wan", 1) == [rewritten(last)]
        rc = vm.guest.quit(TIMEOUT)
        quit_lines = vm.guest.quit_lines
    nics = nic_lines(info)
    assert nics["lan"][0] == "00:02.0" and nics["wan"][0] == "00:03.0"
    for loc, addr, rest in nics.values():
        assert rest.startswith("virtio 1.x, 12-byte header, 256/256 descriptors), mac ")
        assert addr < FOUR_GIB                 # SeaBIOS placed the BARs below 4 GiB
    assert nics["lan"][2].endswith(f"mac {LAN_MAC}")     # read from the device's config
    els, devs = qemu.parse_stats(stats)
    assert els["ipv4"]["other"]["count"] == "4" and els["ipv6"]["other"]["count"] == "2"
    assert els["arp_req"]["in"] == 1 and els["arp_rep"]["in"] == 1
    assert els["other"]["in"] == 3                  # LLDP, the VLAN frame, the one byte
    assert els["drop"]["dropped"] == 5
    assert els["cls"]["other"]["ports"] == "1/1/4/2/3"
    assert els["wan"]["out"] == len(expected)
    # lan: every frame that fit arrived; the two too long for a packet were dropped
    assert devs == {"lan": (len(frames) + 1, 2, 0), "wan": (0, 0, len(expected))}
    virtio = [ln for ln in stats if ln.startswith("  virtio:")]
    assert "oversize 2," in virtio[0] and "bad 0," in virtio[0]
    assert f"tx {len(expected)} frames" in virtio[1]
    check_invariant(els)
    # quit: counters (now with the last frame), then a clean power-off
    assert rc == 1                                  # isa-debug-exit: (0 << 1) | 1
    els, devs = qemu.parse_stats(quit_lines)
    assert els["ipv6"]["other"]["count"] == "3" and devs["wan"][2] == len(expected) + 1
    assert re.match(r"middlebox: halted after \d+ ms", quit_lines[-1])


def test_q35_with_qboot_the_guest_places_the_bars(classifier):
    """qboot leaves every BAR unassigned: the guest gives them addresses
    in its window (0xc0000000 up, below the I/O APIC) and enables them."""
    with PciVM(classifier.path, ["lan", "wan"], firmware="qboot") as vm:
        vm.guest.wait_ready(TIMEOUT)
        assert forwards(vm)
        nics = nic_lines(vm.guest.command("info"))
    assert set(nics) == {"lan", "wan"}
    addrs = sorted(addr for _, addr, _ in nics.values())
    assert all(0xc0000000 <= a < 0xfec00000 for a in addrs)
    assert addrs[0] != addrs[1]


def test_bars_above_4gib_are_mapped(classifier):
    """A 1 GiB 64-bit BAR (ivshmem) does not fit SeaBIOS's 32-bit window,
    so it places the 64-bit BARs, the NICs' among them, above 4 GiB: the
    guest maps them (its boot page tables cover the first 4 GiB only)."""
    extra = ["-object", "memory-backend-ram,id=big,size=1G", "-device", "ivshmem-plain,memdev=big"]
    with PciVM(classifier.path, ["lan", "wan"], extra=extra) as vm:
        vm.guest.wait_ready(TIMEOUT)
        assert forwards(vm, 20)
        nics = nic_lines(vm.guest.command("info"))
    assert set(nics) == {"lan", "wan"}
    assert all(addr >= FOUR_GIB for _, addr, _ in nics.values())


@pytest.mark.parametrize("firmware", ["seabios", "qboot"])
def test_nic_behind_a_pcie_root_port(classifier, firmware):
    """wan sits behind a bridge (bus 1): the guest walks the bridge's bus.
    SeaBIOS opens the bridge's memory window; with qboot the guest places
    the BAR and opens the window itself."""
    port = ["-device", "pcie-root-port,id=rp1,bus=pcie.0,addr=0x5,chassis=1"]
    edit = lambda c: c.replace("bus=pcie.0,addr=0x3", "bus=rp1,addr=0x0")   # noqa: E731
    with PciVM(classifier.path, ["lan", "wan"], firmware=firmware, edit=edit, pre=port) as vm:
        assert "bus=rp1,addr=0x0" in " ".join(vm.cmd)
        vm.guest.wait_ready(TIMEOUT)
        assert forwards(vm, 10)             # received on bus 0, sent on bus 1
        nics = nic_lines(vm.guest.command("info"))
        els, devs = qemu.parse_stats(vm.guest.command("stats"))
    assert nics["lan"][0] == "00:02.0" and nics["wan"][0] == "01:00.0"
    assert devs["lan"] == (10, 0, 0) and devs["wan"] == (0, 0, 10)


def test_transitional_device_is_driven_as_modern(classifier):
    """disable-legacy=off: device ID 0x1000 with both interfaces; the guest
    uses the modern one."""
    edit = lambda c: c.replace("disable-legacy=on", "disable-legacy=off")   # noqa: E731
    with PciVM(classifier.path, ["lan", "wan"], edit=edit) as vm:
        assert "disable-legacy=off" in " ".join(vm.cmd)
        vm.guest.wait_ready(TIMEOUT)
        assert forwards(vm)
        nics = nic_lines(vm.guest.command("info"))
    assert all(rest.startswith("virtio 1.x, 12-byte header") for _, _, rest in nics.values())


def test_legacy_only_device_is_left_out_with_a_warning(classifier):
    """A legacy-only virtio-pci NIC (disable-modern=on) cannot be driven:
    the guest says so, runs without it, and counts what it would have sent."""
    def edit(c):
        if "netdev=n1," in c:
            return c.replace("disable-legacy=on", "disable-legacy=off,disable-modern=on")
        return c
    with PciVM(classifier.path, ["lan", "wan"], edit=edit) as vm:
        vm.guest.wait_ready(TIMEOUT)
        console = vm.guest.console_text()
        frames = [Ether() / IP(dst="10.0.1.1") / UDP() / bytes(i) for i in range(3)]
        for f in frames:
            vm.send("lan", f)
        for _ in range(200):                        # until the three went through
            lines = vm.guest.command("stats")
            if "no NIC: 3 packets dropped" in "\n".join(lines):
                break
        assert vm.quiet("wan") == []
        info = vm.guest.command("info")
    assert re.search(r"warning: virtio device at pci 00:03\.0 left out: no modern interface",
                     console)
    assert "warning: device wan has no NIC" in console
    assert "device wan: no NIC" in info
    assert nic_lines(info)["lan"][0] == "00:02.0"
    els, devs = qemu.parse_stats(lines)
    assert els["ipv4"]["other"]["count"] == "3" and devs["lan"] == (3, 0, 0)


def read_until(proc, pattern, buf, timeout=TIMEOUT):
    """Read proc's stdout (bytes) into buf until `pattern` appears in it."""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    while not re.search(pattern, buf.decode(errors="replace")):
        left = deadline - time.monotonic()
        assert left > 0, f"no {pattern!r} in {buf[-300:]!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            assert chunk, f"EOF before {pattern!r}: {buf[-300:]!r}"
            buf += chunk
    return buf


def test_boot_cli_runs_a_q35_vm_until_quit(classifier):
    cmd = [sys.executable, "-m", "middlebox", "boot", classifier.path, "--machine", "q35",
           "--nic", "lan=user", "--nic", "wan=user", "--accel", "tcg"]
    # its own session: QEMU (the command's child) goes with it if it hangs
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        out = read_until(p, r"middlebox: classifier ready in \d+ us\r?\n", bytearray())
        p.stdin.write(b"info\r")
        p.stdin.flush()
        out = read_until(p, r"clock: .*\n", out)
        rest, err = p.communicate(b"quit\r", timeout=120)
        out = (out + rest).decode(errors="replace")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 0, err
    assert re.search(r"device lan: virtio-net at pci 00:02\.0 ", out)
    assert re.search(r"device wan: virtio-net at pci 00:03\.0 ", out)
    assert "middlebox: halted" in out and "SeaBIOS" not in out
    assert err.decode().startswith(f"booting {classifier.path}: tcg")
