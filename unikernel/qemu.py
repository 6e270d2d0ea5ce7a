"""Launch a guest image under QEMU (`middlebox boot`).

    cmd = command("fw.elf", [("lan", "tap:tap0"), ("wan", "tap:tap1")])
    with Guest(cmd) as g:             # QEMU with the serial console on pipes
        g.wait_ready()                # "middlebox: NAME ready in N us"
        print(g.command("stats"))
        g.quit()                      # counters, then QEMU exits

With Guest(cmd, plan=built.plan), g.read("lb.backends") and
g.write("lb.backends", "10.0.1.1, 10.0.1.2") work as on the host engine:
the element's Python class encodes the message, the console carries it in
hex, and the guest applies it between two passes.

Machine (machine="microvm", the default): microvm with no firmware extras
(option ROMs, PIT, PIC, RTC, ACPI off), virtio-mmio in its modern (virtio
1.x) form, an isa-debug-exit port the guest powers off through, one
virtio-net-device per NIC. NIC k sits on virtio-mmio bus k, which the guest
binds to the k-th device of its plan.

machine="q35": a PC (Q35 chipset, no SATA, SMBus, HPET, SMM, PS/2 or
vmport) booted by SeaBIOS, which loads the PVH
image through QEMU's pvh.bin option ROM (firmware="qboot": qboot, which
boots PVH itself and is faster, but leaves PCI BARs unassigned: the guest
places them); one modern-only virtio-net-pci per NIC (no option ROM of
its own), NIC k in slot 2 + k of bus 0, which the guest finds by walking
PCI configuration space. `-display none` rather than -nographic keeps
SeaBIOS off the serial console.

NIC specs (the part after DEV=):
    tap:IFNAME                  a TAP interface (no scripts run)
    tap:fd=N                    a TAP file descriptor QEMU inherits
    socket:OPTIONS              QEMU's socket netdev, e.g.
                                socket:udp=127.0.0.1:5001,localaddr=127.0.0.1:5000
    dgram:OPTIONS / stream:OPTIONS   QEMU 7.2's dgram and stream netdevs
    vhost-user:PATH             a vhost-user backend's socket (guest RAM is shared)
    user                        QEMU's user-mode network (slirp)
Any spec may end with ,mac=52:54:00:..., which sets the NIC's address.
"""

import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time

from middlebox.errors import ConfigError, RunError

QEMU = "qemu-system-x86_64"
MACHINE = "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,acpi=off"
# q35 without what SeaBIOS would spend boot time on and the guest does not
# use (the AHCI controller alone costs SeaBIOS about 10 ms under TCG).
Q35 = "q35,sata=off,smbus=off,vmport=off,hpet=off,smm=off,i8042=off"
MACHINES = {"microvm": MACHINE, "q35": Q35}
FIRMWARE = {"seabios": None, "qboot": "qboot.rom"}   # q35: -bios (None: QEMU's default)
PCI_SLOT0 = 2           # q35: NIC k in slot PCI_SLOT0 + k of bus 0 (pcie.0)
DEBUG_EXIT = "isa-debug-exit,iobase=0xf4,iosize=4"
MAX_NICS = 8            # microvm without ACPI has eight virtio-mmio slots
MAX_NICS_PCI = 16       # q35: the guest drives up to 16 NICs
READY = re.compile(r"middlebox: (.*) ready in (\d+) us")
HALTED = re.compile(r"middlebox: halted")
# isa-debug-exit makes QEMU exit with (code << 1) | 1: 1 after quit, 3 when
# the guest stopped on an error, 5 on a CPU exception.


def kvm_usable():
    """(True, why) when KVM is hardware virtualization we can open."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return False, f"/dev/kvm: {e.strerror}"
    os.close(fd)
    try:
        with open("/proc/cpuinfo") as f:
            flags = set()
            for line in f:
                if line.startswith("flags"):
                    flags.update(line.split(":", 1)[1].split())
    except OSError:
        return False, "cannot read /proc/cpuinfo"
    if not flags & {"vmx", "svm"}:
        return False, "the CPU has no vmx/svm: /dev/kvm is not hardware virtualization"
    return True, "vmx/svm and /dev/kvm"


def choose_accel(accel="auto"):
    """'kvm' or 'tcg' for --accel auto|kvm|tcg."""
    if accel in ("kvm", "tcg"):
        return accel
    if accel != "auto":
        raise ConfigError(f"--accel: expected auto, kvm or tcg, got '{accel}'")
    return "kvm" if kvm_usable()[0] else "tcg"


def image_memory(image):
    """MiB of guest RAM an image asks for (its .mbmem, written by build), or 16."""
    import json

    from middlebox.unikernel import elf
    try:
        data = elf.read(image).section(".mbmem")
        return max(16, int(json.loads(data)["min_mib"])) if data else 16
    except (OSError, ValueError, KeyError, TypeError):
        return 16


def parse_mem(text, image=None):
    """'auto' (what the image asks for), '16M', '64m', '1G' or a number of MiB -> MiB."""
    if str(text) == "auto":
        return image_memory(image) if image else 16
    m = re.fullmatch(r"(\d+)([MmGg]?)", str(text).strip())
    if not m:
        raise ConfigError(f"--mem: expected auto or a size such as 64M, got '{text}'")
    mib = int(m.group(1)) * (1024 if m.group(2) in ("G", "g") else 1)
    if mib < 4:
        raise ConfigError("--mem: at least 4M")
    return mib


def netdev_args(index, spec, machine="microvm"):
    """QEMU arguments for NIC `index` given its spec; (args, uses_vhost_user)."""
    kind, _, rest = spec.partition(":")
    opts = [o for o in rest.split(",") if o] if rest else []
    mac = [o for o in opts if o.startswith("mac=")]
    opts = [o for o in opts if not o.startswith("mac=")]
    nid = f"n{index}"
    vhost = False
    if kind == "tap":
        if not opts or ("=" in opts[0] and not opts[0].startswith("fd=")):
            raise ConfigError(f"--nic: tap needs an interface name: tap:IFNAME, got '{spec}'")
        if opts[0].startswith("fd="):     # a TAP the caller opened (tests)
            netdev = ["-netdev", ",".join([f"tap,id={nid}"] + opts)]
        else:
            netdev = ["-netdev", ",".join(
                [f"tap,id={nid},ifname={opts[0]},script=no,downscript=no"] + opts[1:])]
    elif kind in ("socket", "dgram", "stream"):
        if not opts:
            raise ConfigError(f"--nic: {kind} needs options, e.g. "
                              "socket:udp=127.0.0.1:5001,localaddr=127.0.0.1:5000")
        netdev = ["-netdev", ",".join([f"{kind},id={nid}"] + opts)]
    elif kind == "vhost-user":
        if not opts:
            raise ConfigError("--nic: vhost-user needs a socket path: vhost-user:PATH")
        netdev = ["-chardev", f"socket,id=c{index},path={opts[0]}",
                  "-netdev", ",".join([f"vhost-user,id={nid},chardev=c{index}"] + opts[1:])]
        vhost = True
    elif kind == "user":
        netdev = ["-netdev", ",".join([f"user,id={nid}"] + opts)]
    else:
        raise ConfigError(f"--nic: unknown backend '{kind}' in '{spec}' "
                          "(tap, socket, dgram, stream, vhost-user, user)")
    if machine == "q35":
        device = ",".join([f"virtio-net-pci,netdev={nid},disable-legacy=on,romfile=,"
                           f"bus=pcie.0,addr={PCI_SLOT0 + index:#x}"] + mac)
    else:
        device = ",".join([f"virtio-net-device,netdev={nid},bus=virtio-mmio-bus.{index}"] + mac)
    return netdev + ["-device", device], vhost


def command(image, nics, accel="tcg", mem="auto", append="", qemu=QEMU, machine="microvm",
            firmware=None, ram="memfd"):
    """The QEMU command line (a list) that boots image with nics, a list of
    (device, spec) in plan device order, on machine microvm or q35 (with
    firmware seabios, the default, or qboot).

    ram="memfd" backs guest RAM with a memfd (4 KiB pages); ram="anonymous"
    is QEMU's default, anonymous memory it asks the host to back with
    transparent huge pages. memfd is the default because the first touch
    of each 2 MiB of a huge-page RAM clears 2 MiB on the host, 0.2 to 1.7 ms
    on this machine kind, and a guest touches a few such regions while it
    boots and when its first frames arrive (bench/boot.py measures both)."""
    if ram not in ("memfd", "anonymous"):
        raise ConfigError(f"guest RAM: expected memfd or anonymous, got '{ram}'")
    if machine not in MACHINES:
        raise ConfigError(f"--machine: expected {' or '.join(MACHINES)}, got '{machine}'")
    if firmware is not None and machine != "q35":
        raise ConfigError("--firmware: only for --machine q35 (microvm boots with qboot)")
    if firmware is not None and firmware not in FIRMWARE:
        raise ConfigError(f"--firmware: expected {' or '.join(FIRMWARE)}, got '{firmware}'")
    most = MAX_NICS_PCI if machine == "q35" else MAX_NICS
    if len(nics) > most:
        raise ConfigError(f"a {machine} guest has at most {most} NICs, got {len(nics)}")
    mib = parse_mem(mem, image)
    cmd = [qemu, "-M", MACHINES[machine], "-accel", accel]
    if FIRMWARE.get(firmware):
        cmd += ["-bios", FIRMWARE[firmware]]
    if accel == "kvm":
        cmd += ["-cpu", "host"]
    cmd += ["-m", f"{mib}M", "-smp", "1", "-nodefaults", "-no-user-config",
            *(["-display", "none"] if machine == "q35" else ["-nographic"]),
            "-no-reboot", "-serial", "stdio", "-kernel", str(image)]
    if append:
        cmd += ["-append", append]
    if machine == "microvm":
        cmd += ["-global", "virtio-mmio.force-legacy=false"]
    cmd += ["-device", DEBUG_EXIT]
    vhost = False
    for i, (_, spec) in enumerate(nics):
        args, v = netdev_args(i, spec, machine)
        cmd += args
        vhost |= v
    if vhost or ram == "memfd":
        # vhost-user backends map guest memory: then it must be shared.
        cmd += ["-object", f"memory-backend-memfd,id=mem,size={mib}M,share={'on' if vhost else 'off'}",
                "-machine", "memory-backend=mem"]
    return cmd


def image_devices(path):
    """(graph name, device names in plan order) of the plan inside an image."""
    from middlebox import plan
    from middlebox.unikernel import elf

    try:
        img = elf.read(path)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    data = img.section(".mbplan")
    if img.pvh_entry is None or data is None:
        raise ConfigError(f"{path}: not a middlebox guest image (build one with middlebox build)")
    try:
        p = plan.read(data)
    except ValueError as e:
        raise ConfigError(f"{path}: its plan is damaged: {e}") from None
    return p["name"], [d["name"] for d in p["devices"]]


def bind_nics(devices, bindings):
    """Order --nic DEV=SPEC bindings by plan device order; every device must
    be bound exactly once."""
    specs = {}
    for text in bindings:
        dev, sep, spec = text.partition("=")
        if not sep or not dev or not spec:
            raise ConfigError(f"--nic expects DEV=SPEC (e.g. lan=tap:tap0), got '{text}'")
        if dev in specs:
            raise ConfigError(f"--nic {dev}: device bound twice")
        if dev not in devices:
            raise ConfigError(f"--nic {dev}: the graph has no device '{dev}' "
                              f"(devices: {', '.join(devices) or 'none'})")
        specs[dev] = spec
    for dev in devices:
        if dev not in specs:
            raise ConfigError(f"device '{dev}' is not bound: add --nic {dev}=tap:IFNAME "
                              "(or socket:..., vhost-user:PATH)")
    return [(dev, specs[dev]) for dev in devices]


def qemu_path():
    path = shutil.which(QEMU)
    if not path:
        raise RunError(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    return path


class Guest:
    """A running QEMU whose serial console is on pipes. Lines the guest
    prints are read by a thread; every method has a timeout. Use as a
    context manager: leaving it kills QEMU (by its own PID) if it still runs.
    """

    def __init__(self, cmd, stderr=None, pass_fds=(), plan=None):
        self.cmd = list(cmd)
        self.plan = plan            # middlebox.plan.Plan: enables read()/write()
        self.lines = []
        self._q = queue.Queue()
        self.t_start = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=stderr if stderr is not None else subprocess.PIPE,
                                     start_new_session=True, pass_fds=tuple(pass_fds))
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.ready = None           # (graph name, in-guest us, host seconds since launch)

    def _read(self):
        buf = b""
        out = self.proc.stdout
        while True:
            chunk = out.read1(4096) if hasattr(out, "read1") else out.read(1)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw.decode(errors="replace").rstrip("\r")
                self._q.put((time.perf_counter(), line))
        if buf:
            self._q.put((time.perf_counter(), buf.decode(errors="replace").rstrip("\r")))
        self._q.put((time.perf_counter(), None))

    def read_line(self, timeout):
        """Next console line (None at EOF); raises TimeoutError."""
        try:
            t, line = self._q.get(timeout=max(timeout, 0))
        except queue.Empty:
            raise TimeoutError("no console output") from None
        if line is not None:
            self.lines.append((t, line))
        else:
            self._q.put((t, None))      # stay at EOF
        return line

    def wait_for(self, pattern, timeout=30.0):
        """Read lines until one matches pattern (a regex); return the match."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.perf_counter() + timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"no line matching {rx.pattern!r} in {timeout} s; "
                                   f"console: {self.console_text()[-500:]!r}")
            line = self.read_line(left)
            if line is None:
                raise RunError(f"QEMU exited ({self.proc.wait()}) before {rx.pattern!r}; "
                               f"console: {self.console_text()[-500:]!r}; "
                               f"stderr: {self.stderr_text()[-500:]!r}")
            m = rx.search(line)
            if m:
                return m

    def wait_ready(self, timeout=30.0):
        m = self.wait_for(READY, timeout)
        self.ready = (m.group(1), int(m.group(2)), self.lines[-1][0] - self.t_start)
        return self.ready

    def send(self, text):
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def command(self, cmd, until=r"^pool: |^commands:|^unknown command|^clock: ", timeout=30.0):
        """Type a console command; return the lines it printed up to the one
        matching `until` (the last line of stats, help, info)."""
        start = len(self.lines)
        self.send(cmd + "\r")
        self.wait_for(until, timeout)
        return [ln for _, ln in self.lines[start:]]

    def quit(self, timeout=30.0):
        """Ask the guest to power off; return QEMU's exit status."""
        start = len(self.lines)
        self.send("quit\r")
        self.wait_for(HALTED, timeout)
        rc = self.proc.wait(timeout=timeout)
        self.quit_lines = [ln for _, ln in self.lines[start:]]
        return rc

    # -- element handlers, as middlebox.runtime.Engine.read/write --------------

    def _element(self, handler):
        if self.plan is None:
            raise RunError("handlers need the graph: Guest(..., plan=built.plan)")
        name, _, h = handler.rpartition(".")
        if not name or name not in self.plan.graph.elements:
            raise RunError(f"no element '{name or handler}' (handlers are ELEMENT.HANDLER)")
        return name, self.plan.graph.elements[name], h, self.plan.index(name)

    def stats(self, timeout=30.0):
        """(elements, devices) counters parsed from the console's table."""
        return parse_stats(self.command("stats", timeout=timeout))

    def write(self, handler, value="", timeout=60.0):
        """Apply write handler "element.handler" with `value` in the VM."""
        name, e, h, index = self._element(handler)
        if h not in e.write_handlers:
            have = ", ".join(sorted(e.write_handlers)) or "none"
            raise RunError(f"element '{name}': no write handler '{h}' (has: {have})")
        try:
            msg = bytes(e.write_handlers[h](e, value))
        except (ValueError, ConfigError) as err:
            raise RunError(f"element '{name}': {h}: {getattr(err, 'message', err)}") from None
        out = self.command(f"control {index} {msg.hex()}", until=r"^control: ", timeout=timeout)
        if out[-1] != "control: ok":
            raise RunError(out[-1].replace("control: error: ", f"element '{name}': {h}: ", 1))

    def query(self, index, what=0, timeout=60.0):
        """The bytes the kernel of element `index` answers to query `what`."""
        out = self.command(f"query {index} {int(what)}", until=r"^query: ", timeout=timeout)
        if out[-1].startswith("query: error"):
            raise RunError(out[-1])
        return bytes.fromhex(out[-1][7:])

    def read(self, handler, timeout=60.0):
        """The value of read handler "element.handler" in the VM, as text."""
        name, e, h, index = self._element(handler)
        els, _ = self.stats(timeout)
        row = els[name]
        stats = {"in": row["in"], "out": row["out"], "dropped": row["dropped"],
                 "created": int(row["other"].get("created", 0))}
        ports = row["other"].get("ports")
        stats["ports"] = [int(x) for x in ports.split("/")] if ports else [row["out"]]
        for x in getattr(e, "xstats", ()):
            if x in row["other"]:
                stats[x] = int(row["other"][x])
        if h in e.read_handlers:
            guest = self

            class Ctx:
                def query(ctx, what=0):
                    return guest.query(index, what, timeout)
            Ctx.stats = stats
            return str(e.read_handlers[h](e, Ctx()))
        if h in stats:
            v = stats[h]
            return " ".join(map(str, v)) if isinstance(v, list) else str(v)
        if h == "class":
            return type(e).__name__
        if h == "config":
            return " ".join(f"{k}={getattr(e, k)}" for k in e.params)
        if h in e.params:
            return str(getattr(e, h))
        raise RunError(f"element '{name}': no read handler '{h}'")

    def console_text(self):
        return "\n".join(ln for _, ln in self.lines)

    def stderr_text(self):
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        try:
            return self.proc.stderr.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""

    def kill(self):
        """Stop QEMU (by its PID) if it is still running."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if f:
                    f.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
        return False


def parse_stats(lines):
    """The console's counter table -> ({element: {class, in, out, dropped,
    other: {name: text}}}, {device: (rx, dropped, tx)})."""
    els, devs = {}, {}
    start = next((i for i, ln in enumerate(lines)
                  if re.match(r"element\s+class\s+in\s+out", ln)), None)
    if start is None:
        raise RunError("no counter table in the console output")
    for ln in lines[start + 1:]:
        m = re.match(r"device (\S+): rx (\d+) \(dropped (\d+)\), tx (\d+)", ln)
        if m:
            devs[m.group(1)] = tuple(int(x) for x in m.groups()[1:])
            continue
        m = re.match(r"(\S+)\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s*(.*)$", ln)
        if m and not ln.startswith(" ") and not devs:
            other = dict(kv.split("=", 1) for kv in m.group(6).split() if "=" in kv)
            els[m.group(1)] = {"class": m.group(2), "in": int(m.group(3)),
                               "out": int(m.group(4)), "dropped": int(m.group(5)),
                               "other": other}
    return els, devs


def dry_run_text(cmd):
    return shlex.join(cmd)
