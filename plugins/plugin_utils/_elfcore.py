# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""ELF64 core files laid out as QEMU's memory-only dump (``dump/dump.c``): one PT_LOAD per guest-physical
RAM range, physical address in ``p_paddr`` (and ``p_vaddr``), data in ascending address order.

For internal collection use only: this is not a public API and may change without notice.
Pure standard library, Python 3.9+.
"""

from __future__ import annotations

import os
import struct

PAGE_SIZE = 4096
ET_CORE = 4
EM_X86_64 = 62
PT_LOAD = 1
EHDR = struct.Struct('<16sHHIQQQIHHHHHH')
PHDR = struct.Struct('<IIQQQQQQ')
MAX_PHDRS = 4096


class ElfError(Exception):
    """The file is not an ELF core this module can read: the message says why."""


def layout_file(segments):
    """File offsets for the segments (sorted by address), data starting on a page boundary so that
    every guest page is one file-system block and a zero page can stay a hole.
    Returns ``(header_bytes, [file_offset per segment], file_size)``."""
    count = len(segments)
    header_size = EHDR.size + count * PHDR.size
    data_start = -(-header_size // PAGE_SIZE) * PAGE_SIZE
    offsets = []
    cursor = data_start
    for seg in segments:
        offsets.append(cursor)
        cursor += seg.length
    ident = b'\x7fELF' + bytes([2, 1, 1, 0]) + bytes(8)     # 64-bit, little-endian, version 1, System V
    header = EHDR.pack(ident, ET_CORE, EM_X86_64, 1, 0, EHDR.size, 0, 0, EHDR.size, PHDR.size, count, 0, 0, 0)
    for seg, offset in zip(segments, offsets):
        header += PHDR.pack(PT_LOAD, 0, offset, seg.phys, seg.phys, seg.length, seg.length, 0)
    return header, offsets, cursor


def read_loads(fd, label):
    """The PT_LOAD headers of an ELF64 core: ``[(phys, length, file_offset)]`` sorted by address, checked
    to lie inside the file and not to overlap."""
    size = os.fstat(fd).st_size
    head = os.pread(fd, EHDR.size, 0)
    if len(head) < EHDR.size or head[:4] != b'\x7fELF':
        raise ElfError('%s is not an ELF file (no ELF magic)' % label)
    if head[4] != 2 or head[5] != 1:
        raise ElfError('%s is not a little-endian 64-bit ELF file' % label)
    fields = EHDR.unpack(head)
    e_type, phoff, phentsize, phnum = fields[1], fields[5], fields[9], fields[10]
    if e_type != ET_CORE:
        raise ElfError('%s is an ELF file of type %d, not a core file (4)' % (label, e_type))
    if phentsize != PHDR.size or not 0 < phnum <= MAX_PHDRS or phoff + phnum * PHDR.size > size:
        raise ElfError('%s has a damaged program header table (%d entries of %d bytes at %d)' % (label, phnum, phentsize, phoff))
    table = os.pread(fd, phnum * PHDR.size, phoff)
    loads = []
    for index in range(phnum):
        p_type, _flags, offset, _vaddr, paddr, filesz, memsz, _align = PHDR.unpack_from(table, index * PHDR.size)
        if p_type != PT_LOAD:
            continue
        if filesz != memsz or offset + filesz > size:
            raise ElfError('%s: PT_LOAD at physical 0x%x claims %d bytes at file offset %d, beyond the file or not all in it'
                           % (label, paddr, memsz, offset))
        loads.append((paddr, filesz, offset))
    loads.sort()
    for before, after in zip(loads, loads[1:]):
        if before[0] + before[1] > after[0]:
            raise ElfError('%s: PT_LOADs at physical 0x%x and 0x%x overlap' % (label, before[0], after[0]))
    return loads


def data_extents(fd, start, end):
    """The ``(start, end)`` byte ranges of the file between ``start`` and ``end`` that hold data (not holes)."""
    extents = []
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:     # ENXIO: no data after pos
            break
        if data >= end:
            break
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        extents.append((data, min(hole, end)))
        pos = hole
    return extents
