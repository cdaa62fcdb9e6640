# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Writes migration streams as QEMU does (migration/savevm.c, ram.c), small enough for unit tests:
header, configuration section, the ``ram`` section in START/PART/END parts with footers, a device
section, EOF and the JSON device description. A test states the blocks and the records it wants,
including ones QEMU would never write, to see the converter refuse them."""

from __future__ import annotations

import json
import struct

PAGE = 4096
ZERO, MEM_SIZE, PAGE_FLAG, EOS, CONTINUE, XBZRLE = 0x02, 0x04, 0x08, 0x10, 0x20, 0x40


def name(text):
    raw = text.encode()
    return bytes([len(raw)]) + raw


def page_of(tag, fill=None):
    """A recognisable page: ``tag`` at its start, then a fill byte."""
    raw = tag.encode() if isinstance(tag, str) else tag
    return (raw + bytes([fill if fill is not None else 0xA5]) * PAGE)[:PAGE]


class StreamWriter:
    def __init__(self, machine='pc-i440fx-7.2', blocks=(('pc.ram', 128 << 20), ('pc.bios', 256 << 10), ('pc.rom', 128 << 10)),
                 capabilities=None, subsections=b''):
        self.machine = machine
        self.blocks = list(blocks)
        self.capabilities = capabilities
        self.subsections = subsections
        self.parts = [[]]       # records per ram section part
        self.last_block = None

    def page(self, block, offset, data):
        self.parts[-1].append(('page', block, offset, data))
        return self

    def zero(self, block, offset, fill=0):
        self.parts[-1].append(('zero', block, offset, fill))
        return self

    def raw(self, data):
        """Bytes put as they are among the records of the current part."""
        self.parts[-1].append(('raw', data))
        return self

    def next_part(self):
        self.parts.append([])
        return self

    def _records(self, records):
        out = b''
        for rec in records:
            if rec[0] == 'raw':
                out += rec[1]
                continue
            kind, block, offset, payload = rec
            flags = ZERO if kind == 'zero' else PAGE_FLAG
            cont = block == self.last_block
            out += struct.pack('>Q', offset | flags | (CONTINUE if cont else 0))
            if not cont:
                out += name(block)
            self.last_block = block
            out += bytes([payload]) if kind == 'zero' else payload
        return out + struct.pack('>Q', EOS)

    def build(self, device_state=True, vmdesc=True):
        self.last_block = None
        out = b'QEVM' + struct.pack('>I', 3)
        machine = self.machine.encode()
        out += b'\x07' + struct.pack('>I', len(machine)) + machine
        if self.capabilities is not None:
            out += b'\x05' + name('configuration/capabilities') + struct.pack('>I', 1)
            out += struct.pack('>I', len(self.capabilities)) + b''.join(name(c) for c in self.capabilities)
        out += self.subsections
        total = sum(size for _n, size in self.blocks)
        setup = struct.pack('>Q', total | MEM_SIZE) + b''.join(name(n) + struct.pack('>Q', s) for n, s in self.blocks)
        out += b'\x01' + struct.pack('>I', 2) + name('ram') + struct.pack('>II', 0, 4)
        out += setup + self._records(self.parts[0]) + b'\x7e' + struct.pack('>I', 2)
        for index, part in enumerate(self.parts[1:], 1):
            kind = 0x03 if index == len(self.parts) - 1 else 0x02
            out += bytes([kind]) + struct.pack('>I', 2) + self._records(part) + b'\x7e' + struct.pack('>I', 2)
        if len(self.parts) == 1:
            out += b'\x03' + struct.pack('>I', 2) + struct.pack('>Q', EOS) + b'\x7e' + struct.pack('>I', 2)
        if device_state:
            # A device section (its bytes mean nothing to the converter) holding what looks like markers.
            out += b'\x04' + struct.pack('>I', 3) + name('timer') + struct.pack('>II', 0, 2) + b'\x00\x06\x00\x00\x00\x01' * 3
            out += b'\x7e' + struct.pack('>I', 3)
        out += b'\x00'
        if vmdesc:
            desc = json.dumps({'page_size': PAGE, 'devices': [{'name': 'timer', 'instance_id': 0, 'vmsd_name': 'timer', 'version': 2}]}).encode()
            out += b'\x06' + struct.pack('>I', len(desc)) + desc
        return out
