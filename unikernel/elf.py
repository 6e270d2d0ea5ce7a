"""Read what `middlebox boot`, the build and the tests need out of a guest
image: its sections (the plan is in `.mbplan`), program headers, the PVH
note, and (unstripped images) symbols and the bytes at an address.

Only ELF64 little-endian x86-64 files are accepted; anything else raises
ValueError with a one-line reason.
"""

import struct

PT_LOAD = 1
PT_NOTE = 4
SHT_SYMTAB = 2
SHT_NOBITS = 8
XEN_ELFNOTE_PHYS32_ENTRY = 18


class Image:
    """A parsed guest image: `.segments`, `.sections`, `.pvh_entry`."""

    def __init__(self, data):
        if len(data) < 64 or data[:4] != b"\x7fELF":
            raise ValueError("not an ELF file")
        if data[4] != 2 or data[5] != 1:
            raise ValueError("not a 64-bit little-endian ELF file")
        (e_type, e_machine, _, self.entry, phoff, shoff, _, _, phentsize, phnum,
         shentsize, shnum, shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", data, 16)
        if e_machine != 62:
            raise ValueError("not an x86-64 ELF file")
        self.data = data
        self.segments = []
        for i in range(phnum):
            off = phoff + i * phentsize
            if off + 56 > len(data):
                raise ValueError("truncated program header table")
            p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align = \
                struct.unpack_from("<IIQQQQQQ", data, off)
            self.segments.append({"type": p_type, "flags": p_flags, "offset": p_offset,
                                  "vaddr": p_vaddr, "paddr": p_paddr, "filesz": p_filesz,
                                  "memsz": p_memsz, "align": p_align})
        raw = []
        for i in range(shnum):
            off = shoff + i * shentsize
            if off + 64 > len(data):
                raise ValueError("truncated section header table")
            raw.append(struct.unpack_from("<IIQQQQIIQQ", data, off))
        self.sections = {}
        self._raw = raw
        if raw and shstrndx < len(raw):
            so, ss = raw[shstrndx][4], raw[shstrndx][5]
            names = data[so:so + ss]
            for sh in raw:
                end = names.find(b"\0", sh[0])
                name = names[sh[0]:end if end >= 0 else None].decode(errors="replace")
                self.sections[name] = {"type": sh[1], "addr": sh[3], "offset": sh[4],
                                       "size": sh[5]}
        self.pvh_entry, self.pvh_note_align = self._pvh()

    def _pvh(self):
        """(entry address, alignment of the PT_NOTE holding it) or (None, None)."""
        for seg in self.segments:
            if seg["type"] != PT_NOTE:
                continue
            off, end = seg["offset"], seg["offset"] + seg["filesz"]
            align = max(seg["align"], 1)
            while off + 12 <= end:
                namesz, descsz, ntype = struct.unpack_from("<III", self.data, off)
                name_at = off + 12
                desc_at = name_at + _up(namesz, align)
                name = self.data[name_at:name_at + namesz].rstrip(b"\0")
                if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY and descsz >= 4:
                    return struct.unpack_from("<I", self.data, desc_at)[0], seg["align"]
                off = desc_at + _up(descsz, align)
        return None, None

    def section(self, name):
        """Bytes of a section, or None when the image has none by that name."""
        s = self.sections.get(name)
        if s is None:
            return None
        return bytes(self.data[s["offset"]:s["offset"] + s["size"]])

    def symbols(self):
        """{name: value} from the symbol table ({} when stripped)."""
        out = {}
        for sh in self._raw:
            if sh[1] != SHT_SYMTAB or sh[6] >= len(self._raw):
                continue
            so, ss = self._raw[sh[6]][4], self._raw[sh[6]][5]
            names = self.data[so:so + ss]
            for off in range(sh[4], sh[4] + sh[5] - 23, 24):
                name, _, _, _, value, _ = struct.unpack_from("<IBBHQQ", self.data, off)
                end = names.find(b"\0", name)
                if name and end > name:
                    out[names[name:end].decode(errors="replace")] = value
        return out

    def read_at(self, addr, n):
        """n bytes the image loads at address addr (from one section)."""
        for s in self.sections.values():
            if s["type"] != SHT_NOBITS and s["addr"] <= addr and addr + n <= s["addr"] + s["size"]:
                at = s["offset"] + addr - s["addr"]
                return bytes(self.data[at:at + n])
        raise ValueError(f"no section holds {n} bytes at {addr:#x}")

    def memory_size(self):
        """Bytes the loadable segments span in guest memory."""
        loads = [s for s in self.segments if s["type"] == PT_LOAD]
        if not loads:
            return 0
        return max(s["paddr"] + s["memsz"] for s in loads) - min(s["paddr"] for s in loads)


def _up(n, align):
    return (n + align - 1) // align * align


def read(path):
    with open(path, "rb") as f:
        return Image(f.read())
