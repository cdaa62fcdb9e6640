# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A reader of QEMU's migration stream (the ``.qevm`` file of a live dump) and of where its RAM lies.

For internal collection use only: this is not a public API and may change without notice.

The stream is untrusted (a compromised hypervisor writes it): every length it states is checked
against a limit before anything is allocated, nothing in it becomes a path, and whatever the parser
does not understand is refused with a :class:`StreamError` that names it. Pure standard library,
Python 3.9+, so an analyst runs it without Ansible.

Format (QEMU 5.2 to 10.x, ``migration/savevm.c`` and ``migration/ram.c``): ``QEVM`` + version 3, a
configuration section (machine type), then sections. RAM travels in the iterative section ``ram``
(version 4): its setup lists the RAM blocks (name, size), then records ``be64(offset | flags)``
[block name unless CONTINUE] followed by a zero-fill byte (ZERO) or a 4 KiB page (PAGE), until EOS.
A page dirtied during the copy is sent again: the last version is the guest's memory at capture.
Device state follows in FULL sections, then EOF and a JSON description of the devices (vmdesc).
"""

from __future__ import annotations

import json
import os
import queue
import re
import struct
import threading
from xml.etree import ElementTree

PAGE_SIZE = 4096            # x86's TARGET_PAGE_SIZE
PAGE_SHIFT = 12
FLAG_MASK = PAGE_SIZE - 1

MAGIC = b'QEVM'
VERSION = 3

VM_EOF = 0x00
VM_SECTION_START = 0x01
VM_SECTION_PART = 0x02
VM_SECTION_END = 0x03
VM_SECTION_FULL = 0x04
VM_SUBSECTION = 0x05
VM_VMDESCRIPTION = 0x06
VM_CONFIGURATION = 0x07
VM_COMMAND = 0x08
VM_SECTION_FOOTER = 0x7E

# RAM record flags (migration/ram.c).
FLAG_ZERO = 0x02
FLAG_MEM_SIZE = 0x04
FLAG_PAGE = 0x08
FLAG_EOS = 0x10
FLAG_CONTINUE = 0x20
FLAG_XBZRLE = 0x40
FLAG_HOOK = 0x80
FLAG_COMPRESS_PAGE = 0x100
FLAG_MULTIFD_FLUSH = 0x200
FLAG_NAMES = {0x01: 'FULL (obsolete)', FLAG_XBZRLE: 'XBZRLE', FLAG_HOOK: 'RDMA hook', FLAG_COMPRESS_PAGE: 'compressed page (compress capability)',
              FLAG_MULTIFD_FLUSH: 'multifd flush (multifd capability: pages travel on other channels)'}
KNOWN_FLAGS = FLAG_ZERO | FLAG_MEM_SIZE | FLAG_PAGE | FLAG_EOS | FLAG_CONTINUE

# Limits a stream cannot talk past: x86 QEMU guests stay far below them.
MAX_RAM_BYTES = 1 << 40          # all RAM blocks together (QEMU moves RAM near 1 TiB anyway)
MAX_BLOCKS = 1024
MAX_VMDESC_BYTES = 16 << 20     # QEMU's device description: about 100 KiB for the guests here
MAX_DOMAIN_XML_BYTES = 8 << 20
READ_CHUNK = 8 << 20
FOUR_GIB = 1 << 32
_BE64 = struct.Struct('>Q')
ZERO_RECORD = 9                 # be64 header + the fill byte
PAGE_RECORD = 8 + PAGE_SIZE
RUN_MIN, ZERO_RUN_MAX, PAGE_RUN_MAX = 4, 4096, 256
_RUNS = {}                      # (record size, run length) -> struct of that many records' headers
# QEMU moves RAM above 1 TiB when it would reach AMD's HyperTransport hole (hw/i386/pc.c).
AMD_HT_START = 0xFD00000000
VGA_WINDOW = (0xA0000, 0xC0000)

CMD_SWITCHOVER_START = 11
COMMAND_NAMES = {1: 'OPEN_RETURN_PATH', 2: 'PING', 3: 'POSTCOPY_ADVISE', 4: 'POSTCOPY_LISTEN', 5: 'POSTCOPY_RUN',
                 6: 'POSTCOPY_RAM_DISCARD', 7: 'PACKAGED', 8: 'RECV_BITMAP', 9: 'POSTCOPY_RESUME', 10: 'ENABLE_COLO',
                 11: 'SWITCHOVER_START'}


class StreamError(Exception):
    """The stream cannot be converted: the message says what, where (byte offset) and what to do."""


class Unsupported(StreamError):
    """The stream uses a QEMU feature this reader does not handle (named in the message)."""


class ReadAhead:
    """The file read and hashed ahead of the parser, each in a thread of its own: reading from disk,
    SHA-256 and parsing overlap (file reads and hashlib release the GIL). ``read()`` returns the next
    chunk (a bytearray whose first HEAD_ROOM bytes are free; b'' at the end). At most ``depth`` chunks
    wait in each queue, so memory stays bounded (a few chunks) whatever the file's size."""

    HEAD_ROOM = 64 << 10

    def __init__(self, handle, label, hasher, chunk=READ_CHUNK, depth=3):
        self._handle = handle
        self._label = label
        self._hasher = hasher
        self._chunk = chunk
        self._parsed = queue.Queue(depth)
        self._hashed = queue.Queue(depth)
        self._stop = threading.Event()
        self._done = False
        self._hash_error = None
        try:
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except (AttributeError, OSError, ValueError):
            pass        # only a hint (and not on every system)
        self._threads = [threading.Thread(target=self._read, daemon=True), threading.Thread(target=self._hash, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _put(self, where, item):
        while not self._stop.is_set():
            try:
                where.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _read(self):
        try:
            while True:
                data = self._next_chunk()
                if not (self._put(self._hashed, data) and self._put(self._parsed, data)) or not data:
                    return
        except OSError as exc:
            self._fail(StreamError('cannot read %s: %s' % (self._label, exc.strerror or exc)))
        except Exception as exc:  # pylint: disable=broad-except  # never leave the parser waiting for a chunk
            self._fail(StreamError('reading %s failed: %s' % (self._label, exc)))

    def _fail(self, error):
        """Hands a read error to the parser, which reports it, and ends the hash."""
        self._put(self._parsed, error)
        self._put(self._hashed, b'')

    def _next_chunk(self):
        """A new bytearray: HEAD_ROOM free bytes (where the parser puts the end of the chunk before, so
        that a record across two chunks costs no copy of the whole chunk), then up to a chunk of the file."""
        data = bytearray(self.HEAD_ROOM + self._chunk)
        view = memoryview(data)
        filled = self.HEAD_ROOM
        while filled < len(data):
            count = self._handle.readinto(view[filled:])
            if not count:
                break
            filled += count
        view.release()
        if filled == self.HEAD_ROOM:
            return b''
        del data[filled:]
        return data

    def _hash(self):
        try:
            while not self._stop.is_set():
                try:
                    data = self._hashed.get(timeout=0.2)
                except queue.Empty:
                    continue
                if not data:
                    return
                # One update per chunk: each update gives the GIL back to the parser and takes it again.
                with memoryview(data) as view:
                    self._hasher.update(view[self.HEAD_ROOM:])
        except Exception as exc:  # pylint: disable=broad-except  # a hash that missed bytes must not be reported
            self._hash_error = exc

    def read(self):
        if self._done:
            return b''
        data = self._parsed.get()
        if isinstance(data, Exception):
            self._done = True
            raise data
        self._done = not data
        return data

    def finish(self):
        """Wait for the hash to take in every byte read (after the parser reached the end of the file)."""
        while not self._done:
            self.read()
        for thread in self._threads:
            thread.join()
        if self._hash_error is not None:
            raise StreamError('hashing %s failed: %s' % (self._label, self._hash_error))

    def close(self):
        self._stop.set()
        for thread in self._threads:
            thread.join()


class Reader:
    """Sequential reads of the chunks a :class:`ReadAhead` gives (read and hashed ahead)."""

    def __init__(self, chunks, label):
        self._chunks = chunks
        self._head_room = chunks.HEAD_ROOM
        self.label = label
        self.buf = b''
        self.pos = 0
        self.base = 0      # stream offset of _buf[0]
        self._eof = False

    @property
    def offset(self):
        return self.base + self.pos

    def _fill(self, need):
        while len(self.buf) - self.pos < need and not self._eof:
            data = self._chunks.read()
            if not data:
                self._eof = True
                break
            left = len(self.buf) - self.pos
            if left <= self._head_room:
                # The rest of the old chunk goes into the free room before the new one: no big copy.
                start = self._head_room - left
                data[start:self._head_room] = self.buf[self.pos:]
                self.base += self.pos - start
                self.buf, self.pos = data, start
                continue
            self.base += self.pos
            self.buf = self.buf[self.pos:] + data[self._head_room:]
            self.pos = 0
        if len(self.buf) - self.pos < need:
            raise StreamError('%s ends at byte %d, in the middle of %d byte(s) that should follow: the stream is truncated '
                              '(an interrupted dump or copy); take the dump again or collect the complete file'
                              % (self.label, self.base + len(self.buf), need))

    def take(self, n):
        if len(self.buf) - self.pos < n:
            self._fill(n)
        start = self.pos
        self.pos += n
        return self.buf[start:self.pos]

    def u8(self):
        if self.pos >= len(self.buf):
            self._fill(1)
        self.pos += 1
        return self.buf[self.pos - 1]

    def be32(self):
        return struct.unpack('>I', self.take(4))[0]

    def be64(self):
        return struct.unpack('>Q', self.take(8))[0]

    def name(self, what):
        """A length-prefixed name (one byte of length), checked to be printable ASCII."""
        length = self.u8()
        raw = self.take(length)
        if not length or not all(0x20 < c < 0x7F for c in raw):
            raise StreamError('%s: the %s at byte %d is not a printable name (%r): the stream is damaged or not from QEMU'
                              % (self.label, what, self.offset - length - 1, raw[:32]))
        return raw.decode('ascii')

    def peek(self):
        """The next byte, left in place (None at the end of the file)."""
        if self.at_end():
            return None
        return self.buf[self.pos]

    def rest(self, limit):
        """Up to ``limit`` bytes of what follows (at least one unless at the end)."""
        if self.pos >= len(self.buf):
            self._fill(1)
        return self.take(min(limit, len(self.buf) - self.pos))

    def at_end(self):
        if self.pos < len(self.buf):
            return False
        try:
            self._fill(1)
        except StreamError:
            return True
        return False


class Runs:
    """What :func:`read_ram_records` calls for a run of records (see there)."""

    def __init__(self, zeros, pages):
        self.zeros = zeros
        self.pages = pages


class Stream:
    """What the header, configuration and RAM setup of a stream say, filled in while it is read."""

    def __init__(self):
        self.machine = None
        self.capabilities = []
        self.blocks = []            # [(name, size)] in stream order
        self.block_index = {}       # name -> index in blocks
        self.ram_ended = False
        self.current_block = None
        self.device_sections = []   # vmsd names from the device description, for the analyst
        self.vmdesc_found = False
        self.size = 0


def read_header(reader, stream):
    """Magic, version and the configuration section (machine type and the capabilities QEMU validates)."""
    head = reader.take(8)
    if head[:4] != MAGIC:
        raise StreamError('%s does not start with QEMU\'s migration-stream magic QEVM (found %r): it is not a live dump '
                          '(a memory-only dump is already an ELF or kdump file and needs no conversion)' % (reader.label, head[:4]))
    version = struct.unpack('>I', head[4:])[0]
    if version != VERSION:
        raise Unsupported('%s: migration stream version %d is not handled (QEMU 5.2 to 10.x write version 3)' % (reader.label, version))
    if reader.at_end():
        raise StreamError('%s ends right after its header: the stream is truncated' % reader.label)


def _read_configuration(reader, stream):
    length = reader.be32()
    if not 0 < length <= 256:
        raise StreamError('%s: the machine type at byte %d claims %d bytes: the stream is damaged' % (reader.label, reader.offset - 4, length))
    raw = reader.take(length)
    if not all(0x20 < c < 0x7F for c in raw):
        raise StreamError('%s: the machine type %r is not printable: the stream is damaged' % (reader.label, raw[:32]))
    stream.machine = raw.decode('ascii')
    while reader.peek() == VM_SUBSECTION:
        reader.u8()
        name = reader.name('configuration subsection')
        reader.be32()   # its version
        if name == 'configuration/target-page-bits':
            bits = reader.be32()
            if bits != PAGE_SHIFT:
                raise Unsupported('%s: target page size 2^%d is not handled (x86 guests use 4 KiB pages)' % (reader.label, bits))
        elif name == 'configuration/capabilities':
            count = reader.be32()
            if count > 64:
                raise StreamError('%s: the configuration claims %d capabilities: the stream is damaged' % (reader.label, count))
            stream.capabilities = [reader.name('capability') for _index in range(count)]
            refused = [c for c in stream.capabilities if c in ('x-ignore-shared', 'mapped-ram')]
            if refused:
                raise Unsupported('%s: the stream was written with migration capability %s (%s), which this converter does not handle'
                                  % (reader.label, ', '.join(refused),
                                     'shared memory is left out of the stream' if 'x-ignore-shared' in refused else 'pages at fixed file offsets'))
        elif name == 'configuration/uuid':
            reader.take(16)
        else:
            raise Unsupported('%s: configuration subsection %r (byte %d) is not handled' % (reader.label, name, reader.offset))


def _read_block_list(reader, stream, total):
    if stream.blocks:
        raise StreamError('%s: a second RAM block list at byte %d: the stream is damaged' % (reader.label, reader.offset))
    if total > MAX_RAM_BYTES:
        raise Unsupported('%s: the stream claims %d GiB of RAM, more than the %d GiB this converter handles'
                          % (reader.label, total >> 30, MAX_RAM_BYTES >> 30))
    remaining = total
    while remaining:
        if len(stream.blocks) >= MAX_BLOCKS:
            raise StreamError('%s: more than %d RAM blocks: the stream is damaged' % (reader.label, MAX_BLOCKS))
        name = reader.name('RAM block name')
        size = reader.be64()
        if size == 0 or size > remaining or size % PAGE_SIZE:
            raise StreamError('%s: RAM block %r claims %d bytes (%d of the stated total left; sizes are whole pages): '
                              'the stream is damaged' % (reader.label, name, size, remaining))
        if name in stream.block_index:
            raise StreamError('%s: RAM block %r is listed twice: the stream is damaged' % (reader.label, name))
        stream.block_index[name] = len(stream.blocks)
        stream.blocks.append((name, size))
        remaining -= size


def _record_run(buf, pos, first, most, size):
    """How many records of ``size`` bytes from ``pos`` on have the flags of ``first`` (the first one's
    header) at consecutive offsets of its block, zero-filled if they are zero records: at most ``most``,
    as a power of two (1 when fewer than 2)."""
    flags = buf[pos + 7:pos + 7 + size * most:size]
    candidates = len(flags) - len(flags.lstrip(flags[:1]))
    if size == ZERO_RECORD:
        fills = buf[pos + 8:pos + 8 + size * most:size]
        candidates = min(candidates, len(fills) - len(fills.lstrip(b'\x00')))
    if candidates < 2:
        return 1
    count = 1 << (candidates.bit_length() - 1)
    headers = _RUNS.get((size, count))
    if headers is None:
        headers = _RUNS[size, count] = struct.Struct('>' + ('Q%dx' % (size - 8)) * count)
    # The headers must be exactly first, first + 1 page, ...: the same flags, no offset skipped.
    if headers.unpack_from(buf, pos) != tuple(range(first, first + count * PAGE_SIZE, PAGE_SIZE)):
        return 1
    return count


def read_ram_records(reader, stream, on_page, on_zero, runs=None):
    """Read the records of one ``ram`` section up to its EOS; call ``on_page(block, offset, data, where)``
    for a page (``where``: its stream offset) and ``on_zero(block, offset, fill)`` for a filled page.
    With ``runs``, runs of records at consecutive offsets of one block (nearly all of a stream) are handed
    over in one call each: ``runs.zeros(block, offset, count)`` for zero pages and ``runs.pages(block,
    offset, count, buf, pos)`` for pages (``count`` records of 4104 bytes at ``buf[pos:]``, each its
    8-byte header and the page)."""
    # The block a CONTINUE record refers to carries over from one section to the next (QEMU's last_recv_block).
    block = stream.current_block
    label = reader.label
    unpack = _BE64.unpack_from
    zero_cap = page_cap = RUN_MIN
    while True:
        # Fast path for the records that make up nearly all of a stream (a zero or a whole page in the
        # block of the record before), straight from the buffer while it surely holds a whole record.
        if block is not None:
            buf, pos, block_size = reader.buf, reader.pos, stream.blocks[block][1]
            limit = len(buf) - PAGE_RECORD
            while pos <= limit:
                value = unpack(buf, pos)[0]
                flags = value & FLAG_MASK
                offset = value - flags
                if offset >= block_size:
                    break
                # Runs of records at consecutive offsets go over in one call; the run length adapts, so
                # that records that only look like a run cost little.
                if flags == FLAG_ZERO | FLAG_CONTINUE:
                    if runs is not None and not buf[pos + 8]:
                        count = _record_run(buf, pos, value, min(zero_cap, (len(buf) - pos) // ZERO_RECORD,
                                                                 (block_size - offset) >> PAGE_SHIFT), ZERO_RECORD)
                        if count > 1:
                            runs.zeros(block, offset, count)
                            pos += ZERO_RECORD * count
                            zero_cap = min(zero_cap * 2, ZERO_RUN_MAX)
                            continue
                        zero_cap = max(zero_cap // 2, RUN_MIN)
                    on_zero(block, offset, buf[pos + 8])
                    pos += ZERO_RECORD
                elif flags == FLAG_PAGE | FLAG_CONTINUE:
                    if runs is not None:
                        count = _record_run(buf, pos, value, min(page_cap, (len(buf) - pos) // PAGE_RECORD,
                                                                 (block_size - offset) >> PAGE_SHIFT), PAGE_RECORD)
                        if count > 1:
                            runs.pages(block, offset, count, buf, pos)
                            pos += PAGE_RECORD * count
                            page_cap = min(page_cap * 2, PAGE_RUN_MAX)
                            continue
                        page_cap = max(page_cap // 2, RUN_MIN)
                    on_page(block, offset, buf[pos + 8:pos + PAGE_RECORD], reader.base + pos + 8)
                    pos += PAGE_RECORD
                else:
                    break
            reader.pos = pos
        where = reader.offset
        value = reader.be64()
        flags = value & FLAG_MASK
        offset = value - flags
        if flags & ~KNOWN_FLAGS:
            unknown = flags & ~KNOWN_FLAGS
            names = [n for f, n in FLAG_NAMES.items() if unknown & f] or ['unknown flags 0x%x' % unknown]
            raise Unsupported('%s: RAM record at byte %d uses %s, which this converter does not handle; take the live dump '
                              'without that migration capability' % (label, where, ', '.join(names)))
        if flags & FLAG_MEM_SIZE:
            _read_block_list(reader, stream, offset)
            continue
        if flags & FLAG_EOS:
            stream.current_block = block
            return
        kind = flags & (FLAG_ZERO | FLAG_PAGE)
        if kind not in (FLAG_ZERO, FLAG_PAGE):
            raise StreamError('%s: RAM record at byte %d has flags 0x%x (no page, or two kinds at once): the stream is damaged'
                              % (label, where, flags))
        if not flags & FLAG_CONTINUE:
            name = reader.name('RAM block name')
            if name not in stream.block_index:
                raise StreamError('%s: a page at byte %d names RAM block %r, which the block list does not have: '
                                  'the stream is damaged' % (label, where, name))
            block = stream.block_index[name]
        elif block is None:
            raise StreamError('%s: the RAM record at byte %d continues a block, but no block was named before: the stream is damaged'
                              % (label, where))
        if offset >= stream.blocks[block][1]:
            raise StreamError('%s: a page at byte %d lies at offset 0x%x of RAM block %r, beyond its %d bytes: the stream is damaged'
                              % (label, where, offset, stream.blocks[block][0], stream.blocks[block][1]))
        if kind == FLAG_ZERO:
            on_zero(block, offset, reader.u8())
        else:
            data_at = reader.offset
            on_page(block, offset, reader.take(PAGE_SIZE), data_at)


def read_stream(reader, stream, on_page, on_zero, runs=None):
    """Read a whole stream: header, configuration, the ``ram`` section's records, and check that device
    state and QEMU's closing device description follow. Other iterative sections are refused."""
    read_header(reader, stream)
    ram_section = None
    last_section = None
    while True:
        where = reader.offset
        if reader.at_end():
            raise StreamError('%s ends at byte %d before QEMU\'s end of stream (%s): the stream is truncated; take the dump again'
                              % (reader.label, where, 'RAM complete, device state missing' if stream.ram_ended else 'RAM incomplete'))
        kind = reader.u8()
        if kind == VM_CONFIGURATION:
            if stream.machine is not None or last_section is not None:
                raise StreamError('%s: a configuration section at byte %d, after the first one: the stream is damaged' % (reader.label, where))
            _read_configuration(reader, stream)
        elif kind in (VM_SECTION_START, VM_SECTION_FULL):
            section_id = reader.be32()
            idstr = reader.name('section name')
            reader.be32()   # instance id
            version = reader.be32()
            last_section = section_id
            if kind == VM_SECTION_FULL:
                if not stream.ram_ended:
                    raise StreamError('%s: device state (section %r) at byte %d before the RAM section ended: the stream is damaged '
                                      'or uses a layout this converter does not handle' % (reader.label, idstr, where))
                _check_device_state(reader, stream, where)
                return
            if idstr != 'ram':
                raise Unsupported('%s: iterative section %r at byte %d is not handled (only RAM is): take the live dump without '
                                  'block migration, dirty-bitmap or device-state migration capabilities' % (reader.label, idstr, where))
            if ram_section is not None:
                raise StreamError('%s: a second RAM section at byte %d: the stream is damaged' % (reader.label, where))
            if version != 4:
                raise Unsupported('%s: RAM section version %d is not handled (QEMU writes version 4)' % (reader.label, version))
            if stream.machine is None:
                raise Unsupported('%s: the stream has no configuration section, so its machine type is unknown (QEMU before 2.12?)'
                                  % reader.label)
            ram_section = section_id
            read_ram_records(reader, stream, on_page, on_zero, runs)
            if not stream.blocks:
                raise StreamError('%s: the RAM section at byte %d does not list its RAM blocks: the stream is damaged' % (reader.label, where))
        elif kind in (VM_SECTION_PART, VM_SECTION_END):
            section_id = reader.be32()
            if section_id != ram_section:
                raise Unsupported('%s: section %d at byte %d continues an iterative section that is not RAM: not handled'
                                  % (reader.label, section_id, where))
            if stream.ram_ended:
                raise StreamError('%s: RAM pages at byte %d after the RAM section ended: the stream is damaged' % (reader.label, where))
            last_section = section_id
            read_ram_records(reader, stream, on_page, on_zero, runs)
            if kind == VM_SECTION_END:
                stream.ram_ended = True
        elif kind == VM_SECTION_FOOTER:
            section_id = reader.be32()
            if section_id != last_section:
                raise StreamError('%s: section footer at byte %d closes section %d, but section %s was open: the stream is damaged'
                                  % (reader.label, where, section_id, last_section))
        elif kind == VM_COMMAND:
            command, length = struct.unpack('>HH', reader.take(4))
            # QEMU 10 marks the start of the final pause with an empty SWITCHOVER_START in every precopy stream.
            if command == CMD_SWITCHOVER_START and length == 0:
                continue
            raise Unsupported('%s: migration command %s at byte %d (postcopy, COLO or a return path) is not handled: take the live dump '
                              'as libvirt does by default' % (reader.label, COMMAND_NAMES.get(command, 'number %d' % command), where))
        elif kind == VM_EOF:
            if not stream.ram_ended:
                raise StreamError('%s: end of stream at byte %d before the RAM section ended: the stream is damaged' % (reader.label, where))
            _check_device_state(reader, stream, where, ended=True)
            return
        else:
            raise Unsupported('%s: section type 0x%02x at byte %d is not handled (unknown to this converter)' % (reader.label, kind, where))


def _check_device_state(reader, stream, where, ended=False):
    """Device state is not memory, and its sections carry no length: instead of parsing them, check that
    the stream ends with EOF + QEMU's JSON device description (vmdesc), whose length proves the tail."""
    tail = bytearray()
    if ended:
        tail += b'\x00'
    # Keep only the last MAX_VMDESC_BYTES + 6 bytes: memory stays bounded however long the tail is.
    keep = MAX_VMDESC_BYTES + 6
    while not reader.at_end():
        tail += reader.rest(READ_CHUNK)
        if len(tail) > 2 * keep:
            del tail[:-keep]
    marker = tail.rfind(b'\x00\x06')
    if marker < 0 or len(tail) < marker + 6:
        raise StreamError('%s: the device state that starts at byte %d does not end with QEMU\'s end-of-stream and device description: '
                          'the stream is truncated or damaged; take the dump again' % (reader.label, where))
    length = struct.unpack('>I', bytes(tail[marker + 2:marker + 6]))[0]
    if marker + 6 + length != len(tail) or length > MAX_VMDESC_BYTES:
        raise StreamError('%s: QEMU\'s device description at the end of the stream has the wrong length (%d byte(s) stated, %d present): '
                          'the stream is truncated or damaged' % (reader.label, length, len(tail) - marker - 6))
    try:
        description = json.loads(bytes(tail[marker + 6:]).decode('utf-8'))
    except (ValueError, RecursionError) as exc:
        raise StreamError('%s: QEMU\'s device description at the end of the stream is not valid JSON (%s): the stream is damaged'
                          % (reader.label, exc))
    devices = description.get('devices') if isinstance(description, dict) else None
    if not isinstance(devices, list):
        raise StreamError('%s: QEMU\'s device description at the end of the stream lists no devices: the stream is damaged' % reader.label)
    page_size = description.get('page_size', PAGE_SIZE)
    if page_size != PAGE_SIZE:
        raise Unsupported('%s: the stream\'s page size is %r, not 4096: not handled' % (reader.label, page_size))
    stream.device_sections = sorted({str(d.get('name'))[:128] for d in devices if isinstance(d, dict)})
    stream.vmdesc_found = True
    stream.size = reader.offset


# --- where the RAM blocks lie in guest-physical memory -------------------------------------------------------------

class Segment:
    """A run of a RAM block placed at a guest-physical address: one PT_LOAD of the ELF."""

    __slots__ = ('phys', 'length', 'block', 'block_offset')

    def __init__(self, phys, length, block, block_offset):
        self.phys, self.length, self.block, self.block_offset = phys, length, block, block_offset

    def as_dict(self):
        return {'phys_start': '0x%x' % self.phys, 'phys_end': '0x%x' % (self.phys + self.length),
                'length': self.length, 'block': self.block, 'block_offset': '0x%x' % self.block_offset}


class Apart:
    """A block, or a range of one, that the stream carries but that has no guest-physical address."""

    __slots__ = ('block', 'block_offset', 'length', 'reason')

    def __init__(self, block, block_offset, length, reason):
        self.block, self.block_offset, self.length, self.reason = block, block_offset, length, reason

    @property
    def label(self):
        if self.block_offset == 0:
            return self.block
        return '%s [0x%x-0x%x)' % (self.block, self.block_offset, self.block_offset + self.length)


def parse_domain_xml(text):
    """The parts of a libvirt domain XML that decide the RAM layout. The XML comes from the hypervisor as
    the stream does: bounded, no DTD or entities, and only numbers and names are taken from it."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode('utf-8', 'replace')
    if len(text) > MAX_DOMAIN_XML_BYTES:
        raise StreamError('the domain XML has %d characters, more than %d: not a libvirt domain XML' % (len(text), MAX_DOMAIN_XML_BYTES))
    if '<!DOCTYPE' in text or '<!ENTITY' in text:
        raise StreamError('the domain XML declares a DTD or entities, which libvirt never writes: refused')
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise StreamError('the domain XML is not well-formed XML (%s)' % exc)
    if root.tag != 'domain':
        raise StreamError('the domain XML has root element <%s>, not <domain>' % root.tag[:64])
    type_el = root.find('./os/type')
    cells = []
    for cell in root.findall('./cpu/numa/cell'):
        cells.append((_xml_int(cell.get('id', str(len(cells))), 'NUMA cell id'), _xml_size(cell.get('memory'), cell.get('unit', 'KiB'), 'NUMA cell memory')))
    dimms = []
    others = []
    for index, mem in enumerate(root.findall('./devices/memory')):
        model = mem.get('model', '')
        size_el = mem.find('./target/size')
        size = _xml_size(size_el.text if size_el is not None else None, size_el.get('unit', 'KiB') if size_el is not None else 'KiB', 'memory device size')
        alias = mem.find('./alias')
        name = alias.get('name') if alias is not None and alias.get('name') else '%s%d' % (model, index)
        address = mem.find('./address')
        base = address.get('base') if address is not None else None
        if model == 'dimm':
            dimms.append({'alias': name, 'size': size, 'base': _xml_int(base, 'DIMM base') if base else None})
        else:
            others.append({'alias': name, 'model': model, 'size': size})
    max_below = None
    for arg in root.iter('{http://libvirt.org/schemas/domain/qemu/1.0}arg'):
        match = re.search(r'max-ram-below-4g=(\d+)([KMGT]?)', arg.get('value', ''))
        if match:
            max_below = int(match.group(1)) << {'': 0, 'K': 10, 'M': 20, 'G': 30, 'T': 40}[match.group(2)]
    memory = root.find('./memory')
    return {
        'machine': type_el.get('machine') if type_el is not None else None,
        'memory': _xml_size(memory.text if memory is not None else None, memory.get('unit', 'KiB') if memory is not None else 'KiB', 'memory'),
        'cells': sorted(cells),
        'dimms': dimms,
        'other_memory_devices': others,
        'max_ram_below_4g': max_below,
        'has_video': any(v.get('type') not in (None, 'none') for v in root.findall('./devices/video/model')),
    }


_UNITS = {'b': 0, 'bytes': 0, 'k': 10, 'kib': 10, 'm': 20, 'mib': 20, 'g': 30, 'gib': 30, 't': 40, 'tib': 40,
          'kb': None, 'mb': None, 'gb': None, 'tb': None}
_DECIMAL = {'kb': 10 ** 3, 'mb': 10 ** 6, 'gb': 10 ** 9, 'tb': 10 ** 12}


def _xml_int(value, what):
    try:
        number = int(str(value).strip(), 0)
    except ValueError:
        raise StreamError('the domain XML\'s %s %r is not a number' % (what, str(value)[:32]))
    if not 0 <= number < 1 << 52:
        raise StreamError('the domain XML\'s %s %d is out of range' % (what, number))
    return number


def _xml_size(value, unit, what):
    if value is None:
        return None
    number = _xml_int(value, what)
    unit = (unit or 'KiB').lower()
    if unit not in _UNITS:
        raise StreamError('the domain XML\'s %s has unit %r, which libvirt does not use' % (what, unit[:16]))
    return number * _DECIMAL[unit] if _UNITS[unit] is None else number << _UNITS[unit]


def machine_family(machine):
    """``i440fx`` or ``q35`` for the machine type the stream names (e.g. pc-i440fx-7.2, pc-q35-10.0)."""
    if machine == 'pc' or machine.startswith('pc-i440fx-') or re.match(r'^pc-\d', machine):
        return 'i440fx'
    if machine == 'q35' or machine.startswith('pc-q35-'):
        return 'q35'
    raise Unsupported('machine type %r is not handled: the converter knows the memory map of x86 pc (i440FX) and q35 machines' % machine)


def split_below_4g(family, ram_size, max_below=None):
    """How much of the machine's RAM QEMU maps below 4 GiB (hw/i386/pc_piix.c, pc_q35.c); the rest starts at 4 GiB."""
    if family == 'i440fx':
        lowmem = max_below or 0xE0000000
        if ram_size >= lowmem and lowmem > 0xC0000000:
            lowmem = 0xC0000000     # gigabyte_align, every machine type since pc-i440fx-1.7
    else:
        lowmem = 0x80000000 if ram_size >= 0xB0000000 else 0xB0000000
        if lowmem > (max_below or FOUR_GIB):
            lowmem = max_below
    return min(ram_size, lowmem)


def plan_layout(stream, domain=None):
    """Place the stream's RAM blocks at guest-physical addresses as QEMU's memory map does.

    Returns ``(segments, apart)``: the machine's RAM (``pc.ram``, or the NUMA cells' ``ram-nodeN`` in
    cell order) split around the PCI hole, DIMMs at the base the domain XML records, the BIOS or pflash
    below 4 GiB; ``apart``: each block (or part of one) that has no guest-physical address, and why.
    """
    family = machine_family(stream.machine)
    sizes = dict(stream.blocks)
    if domain is not None:
        if domain['machine'] and domain['machine'] not in (stream.machine, 'pc', 'q35') and machine_family(domain['machine']) != family:
            raise StreamError('the domain XML describes a %s machine, the stream a %s one: it is not this stream\'s domain XML'
                              % (domain['machine'], stream.machine))
        if domain['machine'] and domain['machine'].startswith('pc-') and domain['machine'] != stream.machine:
            raise StreamError('the domain XML names machine type %s, the stream %s: it is not this stream\'s domain XML'
                              % (domain['machine'], stream.machine))
    main = _main_ram_blocks(stream, domain, sizes)
    ram_size = sum(sizes[name] for name in main)
    below = split_below_4g(family, ram_size, domain and domain['max_ram_below_4g'])
    segments = []
    cursor = 0
    for name in main:
        size = sizes[name]
        start, end = cursor, cursor + size
        if start < below:
            segments.append(Segment(start, min(end, below) - start, name, 0))
        if end > below:
            first = max(start, below)
            segments.append(Segment(FOUR_GIB + first - below, end - first, name, first - start))
        cursor = end
    apart = []
    # A VGA-compatible video device (every one has a RAM block vga.vram) claims the legacy window at 0xa0000:
    # the guest sees the device there, not its RAM, and QEMU's own dump leaves the window out.
    if any(name == 'vga.vram' or name.endswith('/vga.vram') for name in sizes):
        segments, cut = _cut(segments, VGA_WINDOW[0], VGA_WINDOW[1])
        for seg in cut:
            apart.append(Apart(seg.block, seg.block_offset, seg.length,
                               'legacy VGA window 0xa0000-0xc0000: the guest sees its video device there, not this RAM '
                               '(QEMU\'s own dump leaves it out too)'))
    top = FOUR_GIB
    if 'pc.bios' in sizes:
        segments.append(Segment(FOUR_GIB - sizes['pc.bios'], sizes['pc.bios'], 'pc.bios', 0))
        top -= sizes['pc.bios']
    for flash in ('system.flash0', 'system.flash1'):
        if flash in sizes:
            top -= sizes[flash]
            segments.append(Segment(top, sizes[flash], flash, 0))
    for dimm in (domain or {}).get('dimms', []):
        block = 'mem' + dimm['alias']
        if block in sizes and dimm['base'] is not None:
            segments.append(Segment(dimm['base'], sizes[block], block, 0))
    placed = {s.block for s in segments}
    for name, size in stream.blocks:
        if name in placed:
            continue
        if name.startswith('memdimm') or name.startswith('memvirtiomem') or name.startswith('memnvdimm'):
            reason = 'hotplugged memory: its guest-physical base is in the domain XML (give it with the stream) for DIMMs; ' \
                     'virtio-mem and NVDIMM are not handled'
        elif name.endswith('.vram') or name.endswith('.vrom'):
            reason = 'video memory: the guest\'s firmware chose its address (a PCI BAR), which is in the device state ' \
                     'this converter does not read; QEMU\'s own dump shows it there'
        else:
            reason = 'device or firmware memory (option ROM, fw_cfg table): not part of the guest-physical RAM ' \
                     'that QEMU\'s memory-only dump shows'
        apart.append(Apart(name, 0, size, reason))
    segments.sort(key=lambda s: s.phys)
    for before, after in zip(segments, segments[1:]):
        if before.phys + before.length > after.phys:
            raise StreamError('RAM blocks %r and %r would overlap at guest-physical 0x%x: the domain XML does not match the stream'
                              % (before.block, after.block, after.phys))
    if segments and segments[-1].phys + segments[-1].length > AMD_HT_START:
        raise Unsupported('guest RAM reaches 0x%x, where QEMU may move it above 1 TiB on AMD hosts: not handled'
                          % (segments[-1].phys + segments[-1].length))
    return segments, apart


def _cut(segments, start, end):
    """Remove guest-physical [start, end) from the segments; return (what stays, what was cut out)."""
    kept, cut = [], []
    for seg in segments:
        lo, hi = max(seg.phys, start), min(seg.phys + seg.length, end)
        if lo >= hi:
            kept.append(seg)
            continue
        if seg.phys < lo:
            kept.append(Segment(seg.phys, lo - seg.phys, seg.block, seg.block_offset))
        cut.append(Segment(lo, hi - lo, seg.block, seg.block_offset + lo - seg.phys))
        if hi < seg.phys + seg.length:
            kept.append(Segment(hi, seg.phys + seg.length - hi, seg.block, seg.block_offset + hi - seg.phys))
    return kept, cut


def _main_ram_blocks(stream, domain, sizes):
    """The blocks that make up the machine's RAM, in the order QEMU concatenates them."""
    # NUMA cells are RAM blocks of their own when QEMU got them as memory backends (libvirt does so since QEMU 5);
    # with the older "-numa node,mem=" the machine's RAM is still the one block pc.ram.
    if domain is not None and domain['cells'] and not ('pc.ram' in sizes and 'ram-node0' not in sizes):
        names = ['ram-node%d' % cell for cell, _size in domain['cells']]
        for (cell, size), name in zip(domain['cells'], names):
            if name not in sizes:
                raise StreamError('the domain XML has NUMA cell %d, but the stream has no RAM block %r (it has %s): '
                                  'it is not this stream\'s domain XML' % (cell, name, ', '.join(sizes)))
            if size is not None and size != sizes[name]:
                raise StreamError('the domain XML gives NUMA cell %d %d bytes, the stream\'s block %r has %d: '
                                  'it is not this stream\'s domain XML' % (cell, size, name, sizes[name]))
        return names
    if 'pc.ram' in sizes:
        if domain is not None and domain['memory'] is not None and not domain['cells']:
            expected = domain['memory'] - sum(d['size'] or 0 for d in domain['dimms']) - sum(d['size'] or 0 for d in domain['other_memory_devices'])
            if expected != sizes['pc.ram']:
                raise StreamError('the domain XML gives the guest %d bytes of RAM, the stream\'s pc.ram has %d: '
                                  'it is not this stream\'s domain XML' % (expected, sizes['pc.ram']))
        return ['pc.ram']
    nodes = sorted((int(name[8:]), name) for name in sizes if re.match(r'^ram-node\d{1,4}$', name))
    if nodes and [n for n, _name in nodes] == list(range(len(nodes))):
        return [name for _n, name in nodes]
    raise StreamError('the stream has no RAM block that is the guest\'s main memory (pc.ram or ram-node0...; it has %s): '
                      'give the domain XML recorded with the dump' % ', '.join(sizes))
