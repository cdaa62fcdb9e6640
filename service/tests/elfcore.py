"""A minimal reader of ELF core program headers (enough to map guest physical addresses to file offsets)."""

import struct
import typing as t

PT_LOAD = 1
PT_NOTE = 4
PN_XNUM = 0xFFFF


class Segment(t.NamedTuple):
    """One program header."""

    p_type: int
    offset: int
    paddr: int
    filesz: int
    memsz: int


def read_header(path: str) -> t.Tuple[int, int, t.List[Segment]]:
    """(ELF class, e_type, program headers) of an ELF file."""
    with open(path, "rb") as handle:
        ident = handle.read(64)
        if ident[:4] != b"\x7fELF":
            raise ValueError("not an ELF file")
        elf_class, endian = ident[4], "<" if ident[5] == 1 else ">"
        if elf_class == 2:
            e_type, = struct.unpack_from(endian + "H", ident, 0x10)
            phoff, shoff = struct.unpack_from(endian + "QQ", ident, 0x20)
            phentsize, phnum = struct.unpack_from(endian + "HH", ident, 0x36)
            sh_info_at = 0x2C
        else:
            e_type, = struct.unpack_from(endian + "H", ident, 0x10)
            phoff, shoff = struct.unpack_from(endian + "II", ident, 0x1C)
            phentsize, phnum = struct.unpack_from(endian + "HH", ident, 0x2A)
            sh_info_at = 0x1C
        if phnum == PN_XNUM:
            handle.seek(shoff + sh_info_at)
            phnum, = struct.unpack(endian + "I", handle.read(4))
        handle.seek(phoff)
        table = handle.read(phentsize * phnum)
    segments = []
    for i in range(phnum):
        if elf_class == 2:
            p_type, _flags, offset, _vaddr, paddr, filesz, memsz, _align = struct.unpack_from(endian + "IIQQQQQQ", table, i * phentsize)
        else:
            p_type, offset, _vaddr, paddr, filesz, memsz, _flags, _align = struct.unpack_from(endian + "IIIIIIII", table, i * phentsize)
        segments.append(Segment(p_type, offset, paddr, filesz, memsz))
    return elf_class, e_type, segments


def phys_to_offset(segments: t.Sequence[Segment], paddr: int) -> int:
    """File offset of a guest physical address."""
    for seg in segments:
        if seg.p_type == PT_LOAD and seg.paddr <= paddr < seg.paddr + seg.filesz:
            return seg.offset + paddr - seg.paddr
    raise KeyError(f"physical address {paddr:#x} is in no PT_LOAD segment")
