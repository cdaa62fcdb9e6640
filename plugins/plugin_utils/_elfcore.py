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

import errno
import os
import struct

PAGE_SIZE = 4096
ET_CORE = 4
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
NHDR = struct.Struct('<III')
# What the stream carries without a guest-physical address goes into notes of this name and type; readers of
# guest memory skip notes they do not know.
NOTE_NAME = b'MEMDUMP\x00'
NT_MEMDUMP_BLOCK = 0x4D440001
# desc: bytes from the desc's start to the data, block offset, length, length of the block's name; the name.
NOTE_META = struct.Struct('<QQQH')
EHDR = struct.Struct('<16sHHIQQQIHHHHHH')
PHDR = struct.Struct('<IIQQQQQQ')
MAX_PHDRS = 4096


class ElfError(Exception):
    """The file is not an ELF core this module can read: the message says why."""


def _page_up(value):
    return -(-value // PAGE_SIZE) * PAGE_SIZE


def layout_file(segments, apart=()):
    """File offsets for the segments (sorted by address), data starting on a page boundary so that
    every guest page is one file-system block and a zero page can stay a hole; then one ``MEMDUMP`` note
    per item of ``apart`` (what the stream carries without a guest-physical address), its bytes page-aligned.
    Returns ``(header_bytes, [file_offset per segment], [(note_offset, note_head_bytes, data_offset)], file_size)``."""
    count = len(segments) + (1 if apart else 0)
    cursor = _page_up(EHDR.size + count * PHDR.size)
    offsets = []
    for seg in segments:
        offsets.append(cursor)
        cursor += seg.length
    notes = []
    note_start = cursor
    for item in apart:
        name = item.block.encode('ascii')
        desc_start = cursor + NHDR.size + len(NOTE_NAME)
        meta_size = NOTE_META.size + len(name)
        data_offset = _page_up(desc_start + meta_size)
        meta = NOTE_META.pack(data_offset - desc_start, item.block_offset, item.length, len(name)) + name
        head = NHDR.pack(len(NOTE_NAME), data_offset - desc_start + item.length, NT_MEMDUMP_BLOCK) + NOTE_NAME + meta
        notes.append((cursor, head, data_offset))
        cursor = data_offset + item.length
    ident = b'\x7fELF' + bytes([2, 1, 1, 0]) + bytes(8)     # 64-bit, little-endian, version 1, System V
    header = EHDR.pack(ident, ET_CORE, EM_X86_64, 1, 0, EHDR.size, 0, 0, EHDR.size, PHDR.size, count, 0, 0, 0)
    if apart:
        header += PHDR.pack(PT_NOTE, 0, note_start, 0, 0, cursor - note_start, cursor - note_start, 0)
    for seg, offset in zip(segments, offsets):
        header += PHDR.pack(PT_LOAD, 0, offset, seg.phys, seg.phys, seg.length, seg.length, 0)
    return header, offsets, notes, cursor


def read_block_notes(fd, label):
    """The ``MEMDUMP`` block notes of the ELF: ``[(block, block_offset, length, data_offset)]``."""
    size = os.fstat(fd).st_size
    found = []
    for p_type, offset, _paddr, filesz, _memsz in _phdrs(fd, label):
        if p_type != PT_NOTE:
            continue
        cursor, end = offset, offset + filesz
        while cursor + NHDR.size <= end:
            namesz, descsz, n_type = NHDR.unpack(os.pread(fd, NHDR.size, cursor))
            name_at = cursor + NHDR.size
            desc_at = name_at + (-(-namesz // 4) * 4)
            if desc_at + descsz > end:
                raise ElfError('%s: a note at file offset %d runs past its PT_NOTE' % (label, cursor))
            if n_type == NT_MEMDUMP_BLOCK and os.pread(fd, namesz, name_at) == NOTE_NAME and descsz >= NOTE_META.size:
                skip, block_offset, length, name_len = NOTE_META.unpack(os.pread(fd, NOTE_META.size, desc_at))
                name = os.pread(fd, name_len, desc_at + NOTE_META.size)
                if skip + length != descsz or desc_at + skip + length > size:
                    raise ElfError('%s: the MEMDUMP note at file offset %d is damaged' % (label, cursor))
                found.append((name.decode('ascii', 'replace'), block_offset, length, desc_at + skip))
            cursor = desc_at + (-(-descsz // 4) * 4)
    return found


def _phdrs(fd, label):
    """``[(p_type, offset, paddr, filesz, memsz)]`` of every program header, checked to lie inside the file."""
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
    out = []
    for index in range(phnum):
        p_type, _flags, offset, _vaddr, paddr, filesz, memsz, _align = PHDR.unpack_from(table, index * PHDR.size)
        if offset + filesz > size:
            raise ElfError('%s: program header %d claims %d bytes at file offset %d, beyond the file' % (label, index, filesz, offset))
        out.append((p_type, offset, paddr, filesz, memsz))
    return out


def read_loads(fd, label):
    """The PT_LOAD headers of an ELF64 core: ``[(phys, length, file_offset)]`` sorted by address, checked
    to lie inside the file and not to overlap."""
    loads = []
    for p_type, offset, paddr, filesz, memsz in _phdrs(fd, label):
        if p_type != PT_LOAD:
            continue
        if filesz != memsz:
            raise ElfError('%s: PT_LOAD at physical 0x%x has %d bytes in the file but %d in memory' % (label, paddr, filesz, memsz))
        loads.append((paddr, filesz, offset))
    loads.sort()
    for before, after in zip(loads, loads[1:]):
        if before[0] + before[1] > after[0]:
            raise ElfError('%s: PT_LOADs at physical 0x%x and 0x%x overlap' % (label, before[0], after[0]))
    return loads


def data_extents(fd, start, end):
    """The ``(start, end)`` byte ranges of the file between ``start`` and ``end`` that hold data (not holes).
    Where the system cannot tell holes, all the rest counts as data (never a hole that is not one)."""
    extents = []
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:    # ENXIO: no data after pos
                extents.append((pos, end))
            break
        except AttributeError:      # no SEEK_DATA on this system
            extents.append((pos, end))
            break
        if data >= end:
            break
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        extents.append((data, min(hole, end)))
        pos = hole
    return extents
