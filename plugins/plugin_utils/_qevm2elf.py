# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Convert a live dump (QEMU's migration stream, ``.qevm``) into an ELF64 core laid out as QEMU's own
memory-only dump, and check the result page by page against the stream.

For internal collection use only: this is not a public API and may change without notice.

``convert(stream_path, elf_path, domain_xml=None)`` and ``check(stream_path, elf_path, domain_xml=None)``
return a report (a dict of plain JSON types) with both SHA-256s, the page counts and the converter's
version: what the custody log's ``derived`` event records. The stream stays the primary evidence.

It is also a command for an analyst with the image and without Ansible (Python 3.9+ only), run from the
directory that holds ``ansible_collections``::

    python3 -m ansible_collections.vmforensics.memdump.plugins.plugin_utils._qevm2elf STREAM OUT.elf [--domain-xml FILE]
"""

from __future__ import annotations

import argparse
import bisect
import datetime
import errno
import hashlib
import json
import os
import sys
import threading
import time

from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _custody_log as custody_log
from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _elfcore as elfcore
from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _qemu_stream as qs

CONVERTER = 'vmforensics.memdump qevm2elf'
# Raise when the ELF written for the same stream would differ (layout, placement rules).
CONVERTER_VERSION = '1.0'
ZERO_PAGE = bytes(qs.PAGE_SIZE)
WRITE_BATCH = 1 << 20
MAX_LISTED = 10


class ConvertError(Exception):
    """The conversion or the check cannot be done: the message says what, which file, and what to do."""


class PageBits:
    """One bit per guest page, allocated 4096 pages at a time and only where a page shows up, so memory
    follows what the stream really carries and never what it claims."""

    CHUNK_PAGES = 4096

    def __init__(self):
        self._chunks = {}

    def set(self, page, value=True):
        chunk = self._chunks.get(page // self.CHUNK_PAGES)
        if chunk is None:
            if not value:
                return
            chunk = self._chunks[page // self.CHUNK_PAGES] = bytearray(self.CHUNK_PAGES // 8)
        bit = page % self.CHUNK_PAGES
        if value:
            chunk[bit >> 3] |= 1 << (bit & 7)
        else:
            chunk[bit >> 3] &= ~(1 << (bit & 7)) & 0xFF

    def get(self, page):
        chunk = self._chunks.get(page // self.CHUNK_PAGES)
        if chunk is None:
            return False
        bit = page % self.CHUNK_PAGES
        return bool(chunk[bit >> 3] & (1 << (bit & 7)))

    def _spans(self, first, count):
        """``(index, low, high)``: the chunks pages first .. first + count - 1 fall in, and which of their bits."""
        end = first + count
        while first < end:
            index = first // self.CHUNK_PAGES
            base = index * self.CHUNK_PAGES
            high = min(end - base, self.CHUNK_PAGES)
            yield index, first - base, high
            first = base + high

    def set_range(self, first, count, value=True):
        for index, low, high in self._spans(first, count):
            chunk = self._chunks.get(index)
            if chunk is None:
                if not value:
                    continue
                chunk = self._chunks[index] = bytearray(self.CHUNK_PAGES // 8)
            mask = ((1 << (high - low)) - 1) << low
            bits = int.from_bytes(chunk, 'little')
            chunk[:] = (bits | mask if value else bits & ~mask).to_bytes(len(chunk), 'little')

    def any_in_range(self, first, count):
        for index, low, high in self._spans(first, count):
            chunk = self._chunks.get(index)
            if chunk is not None and int.from_bytes(chunk, 'little') >> low & ((1 << (high - low)) - 1):
                return True
        return False

    def count(self):
        return sum(bin(int.from_bytes(chunk, 'little')).count('1') for chunk in self._chunks.values())

    def raw(self):
        """The chunks themselves ({index: bytearray}), for loops that run once per record."""
        return self._chunks

    def chunks(self):
        """``(index, bits)`` of every allocated chunk: pages index * CHUNK_PAGES onwards."""
        return self._chunks.items()

    def chunk(self, index):
        return self._chunks.get(index) or bytes(self.CHUNK_PAGES // 8)


class _WriteBehind:
    """Has the disk write the ELF while the conversion goes on (a background fdatasync after every STEP
    bytes written), so that the final fsync waits for the last part only. An error of a background
    sync is raised by :meth:`finish`, since the kernel reports it only once."""

    STEP = 64 << 20

    def __init__(self, fd):
        self._fd = fd
        self._pending = 0
        self._thread = None
        self._error = None

    def _sync(self):
        try:
            getattr(os, 'fdatasync', os.fsync)(self._fd)
        except OSError as exc:
            self._error = exc

    def wrote(self, count):
        self._pending += count
        if self._pending >= self.STEP and (self._thread is None or not self._thread.is_alive()):
            self._pending = 0
            self._thread = threading.Thread(target=self._sync, daemon=True)
            self._thread.start()

    def join(self):
        if self._thread is not None:
            self._thread.join()

    def finish(self):
        self.join()
        if self._error is not None:
            raise self._error
        os.fsync(self._fd)


class _Placement:
    """Where each page of each block goes: a file offset in the ELF and a guest-physical address (None for
    what is kept apart in a MEMDUMP note)."""

    def __init__(self, stream, runs):
        # runs: [(phys or None, length, block_name, block_offset, file_offset)]
        self.by_block = [[] for _block in stream.blocks]
        for phys, length, name, block_offset, file_offset in runs:
            self.by_block[stream.block_index[name]].append(
                (block_offset, block_offset + length, file_offset - block_offset, None if phys is None else phys - block_offset))

    def run(self, block, offset, count):
        """The placement of the pages from ``offset`` on: ``(pages, delta, phys)`` for as many of the
        ``count`` pages as lie in one range (delta None: in none, up to the next range)."""
        following = None
        for start, end, delta, phys in self.by_block[block]:
            if start <= offset < end:
                return min(count, -(-(end - offset) // qs.PAGE_SIZE)), delta, phys
            if offset < start and (following is None or start < following):
                following = start
        return (count if following is None else min(count, -(-(following - offset) // qs.PAGE_SIZE))), None, None

    def phys(self, block, offset):
        for start, end, _delta, phys in self.by_block[block]:
            if start <= offset < end:
                return None if phys is None else offset + phys
        return None


def _open_stream(path):
    try:
        return open(path, 'rb')     # pylint: disable=consider-using-with  # closed by the caller's with
    except OSError as exc:
        raise ConvertError('cannot read the stream %s: %s' % (path, exc.strerror or exc))


def _domain(domain_xml):
    try:
        return qs.parse_domain_xml(domain_xml)
    except qs.StreamError as exc:
        raise ConvertError(str(exc))


def _block_report(stream, segments, apart, carried, zero):
    blocks = []
    for index, (name, size) in enumerate(stream.blocks):
        entry = {'name': name, 'size': size, 'records': carried[index], 'zero_records': zero[index]}
        ranges = [s.as_dict() for s in segments if s.block == name]
        if ranges:
            entry['placed'] = ranges
        kept = [{'range': item.label, 'reason': item.reason} for item in apart if item.block == name]
        if kept:
            # In the ELF as a MEMDUMP note (not as guest-physical memory): every page the stream carries is in the ELF.
            entry['kept_apart'] = kept
        blocks.append(entry)
    return blocks


def convert(stream_path, elf_path, domain_xml=None, verify=True):
    """Write ``elf_path`` (which must not exist) from the stream at ``stream_path``.

    ``domain_xml`` is the libvirt domain XML recorded with the dump (text), used to place NUMA cells and
    DIMMs and to confirm the stream is that guest's. With ``verify`` (the default) the result is then
    checked page by page (see :func:`check`) and the check is part of the report.
    Raises :class:`ConvertError` with a message for the analyst; never leaves a partial ELF behind.
    """
    started = time.monotonic()
    started_at = _utc_now()
    domain = _domain(domain_xml)
    try:
        fd = os.open(elf_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise ConvertError('%s already exists: the converter never overwrites a file (evidence); choose another name or remove it' % elf_path)
        raise ConvertError('cannot create %s: %s' % (elf_path, exc.strerror or exc))
    try:
        behind = _WriteBehind(fd)
        try:
            report = _write(stream_path, elf_path, fd, domain, behind)
            behind.finish()
        finally:
            behind.join()
    except BaseException:
        os.close(fd)
        os.unlink(elf_path)
        raise
    os.close(fd)
    report['convert_sec'] = round(time.monotonic() - started, 3)
    report['started_at'] = started_at
    if verify:
        report['check'] = check(stream_path, elf_path, domain_xml)
        report['elf']['sha256'] = report['check']['elf_sha256']
    report['finished_at'] = _utc_now()
    return report


def _write(stream_path, elf_path, fd, domain, behind):
    stream = qs.Stream()
    state = {'placement': None, 'segments': None, 'apart': None, 'run_start': None, 'run': [], 'run_len': 0}
    written = PageBits()     # pages whose latest version in the ELF is data (a later zero must overwrite it)
    seen = PageBits()
    counts = {'unplaced_records': 0, 'apart_records': 0}
    carried = []
    zero = []

    def place():
        try:
            segments, apart = qs.plan_layout(stream, domain)
        except qs.StreamError as exc:
            raise ConvertError('%s: %s' % (stream_path, exc))
        header, offsets, notes, size = elfcore.layout_file(segments, apart)
        os.pwrite(fd, header, 0)
        for note_offset, head, _data_offset in notes:
            os.pwrite(fd, head, note_offset)
        os.ftruncate(fd, size)
        state['segments'], state['apart'], state['size'] = segments, apart, size
        runs = [(s.phys, s.length, s.block, s.block_offset, o) for s, o in zip(segments, offsets)]
        runs += [(None, a.length, a.block, a.block_offset, note[2]) for a, note in zip(apart, notes)]
        state['placement'] = _Placement(stream, runs)
        carried.extend([0] * len(stream.blocks))
        zero.extend([0] * len(stream.blocks))
        return state['placement']

    def flush():
        if state['run']:
            os.pwrite(fd, b''.join(state['run']), state['run_start'])
            behind.wrote(state['run_len'])
            state['run'], state['run_len'] = [], 0

    # The two callbacks run once per record (about a million for a 4 GiB guest): bit operations inline.
    seen_chunks, written_chunks = seen.raw(), written.raw()

    def locate(block, offset):
        placement = state['placement'] or place()
        carried[block] += 1
        for start, end, delta, phys in placement.by_block[block]:
            if start <= offset < end:
                if phys is None:
                    counts['apart_records'] += 1
                where = offset + delta
                page = where >> 12
                chunk = seen_chunks.get(page >> 12)
                if chunk is None:
                    chunk = seen_chunks[page >> 12] = bytearray(512)
                chunk[(page >> 3) & 511] |= 1 << (page & 7)
                return where
        counts['unplaced_records'] += 1
        return None

    def on_page(block, offset, data, _at):
        where = locate(block, offset)
        if where is None:
            return
        written.set(where >> 12)
        if state['run'] and state['run_start'] + state['run_len'] == where and state['run_len'] < WRITE_BATCH:
            state['run'].append(data)
            state['run_len'] += qs.PAGE_SIZE
            return
        flush()
        state['run'], state['run_start'], state['run_len'] = [data], where, qs.PAGE_SIZE

    def on_zero(block, offset, fill):
        where = locate(block, offset)
        zero[block] += 1
        if where is None:
            return
        page = where >> 12
        chunk = written_chunks.get(page >> 12)
        if fill or (chunk is not None and chunk[(page >> 3) & 511] >> (page & 7) & 1):
            # A page that held data (or a non-zero fill): this later version replaces it in the file.
            flush()
            os.pwrite(fd, bytes([fill]) * qs.PAGE_SIZE, where)
            written.set(page, bool(fill))

    def on_zeros(block, offset, count):
        # A run of zero pages: the ELF's sparse hole already reads as zero unless a page of it held data.
        placement = state['placement'] or place()
        while count:
            pages, delta, phys = placement.run(block, offset, count)
            if delta is not None and written.any_in_range((offset + delta) >> 12, pages):
                for index in range(pages):
                    on_zero(block, offset + index * qs.PAGE_SIZE, 0)
            else:
                zero[block] += pages
                record_run(block, offset, pages, delta, phys)
            offset += pages * qs.PAGE_SIZE
            count -= pages

    def record_run(block, offset, pages, delta, phys):
        """Counts a run of records and marks its pages seen; the ELF page it starts at (None: not placed)."""
        carried[block] += pages
        if delta is None:
            counts['unplaced_records'] += pages
            return None
        if phys is None:
            counts['apart_records'] += pages
        first = (offset + delta) >> 12
        seen.set_range(first, pages)
        return first

    def on_pages(block, offset, count, buf, pos):
        placement = state['placement'] or place()
        view = memoryview(buf)
        while count:
            pages, delta, phys = placement.run(block, offset, count)
            first = record_run(block, offset, pages, delta, phys)
            if first is not None:
                written.set_range(first, pages)
                flush()     # an older version of one of these pages may wait in the batch
                data = b''.join([view[at:at + qs.PAGE_SIZE] for at in range(pos + 8, pos + pages * qs.PAGE_RECORD, qs.PAGE_RECORD)])
                os.pwrite(fd, data, offset + delta)
                behind.wrote(len(data))
            offset += pages * qs.PAGE_SIZE
            pos += pages * qs.PAGE_RECORD
            count -= pages

    digest = hashlib.sha256()
    with _open_stream(stream_path) as handle:
        ahead = qs.ReadAhead(handle, stream_path, digest)
        reader = qs.Reader(ahead, stream_path)
        try:
            qs.read_stream(reader, stream, on_page, on_zero, qs.Runs(on_zeros, on_pages))
            flush()
            ahead.finish()
        except qs.StreamError as exc:
            raise ConvertError(str(exc))
        except OSError as exc:
            raise ConvertError('cannot write %s: %s' % (elf_path, exc.strerror or exc))
        finally:
            ahead.close()
        stream_size = reader.offset
    if state['placement'] is None:     # a stream without a single page record still has a layout
        place()
    records, distinct = sum(carried), seen.count()
    return {
        'converter': CONVERTER,
        'converter_version': CONVERTER_VERSION,
        'stream': {'path': stream_path, 'size': stream_size, 'sha256': digest.hexdigest()},
        'elf': {'path': elf_path, 'size': state['size'], 'allocated': os.fstat(fd).st_blocks * 512, 'sha256': None},
        'machine': stream.machine,
        'domain_xml_used': domain is not None,
        'blocks': _block_report(stream, state['segments'], state['apart'], carried, zero),
        'segments': [s.as_dict() for s in state['segments']],
        'pages': {'records': records, 'data_records': records - sum(zero), 'zero_records': sum(zero),
                  'superseded_versions': records - counts['unplaced_records'] - distinct,
                  'distinct': distinct, 'records_kept_apart': counts['apart_records'], 'records_not_in_elf': counts['unplaced_records']},
        'device_sections': stream.device_sections,
    }


def check(stream_path, elf_path, domain_xml=None):
    """Check an ELF against the stream it was derived from, independently of how it was written: its
    PT_LOADs are the layout the stream (and domain XML) give; the last version of every page the stream
    carries for a placed block is in the ELF at that page's guest-physical address; every other page of
    the ELF is zero. Returns the check's report (``ok`` True or False, counts, both SHA-256s)."""
    started = time.monotonic()
    domain = _domain(domain_xml)
    try:
        fd = os.open(elf_path, os.O_RDONLY)
    except OSError as exc:
        raise ConvertError('cannot read the ELF %s: %s' % (elf_path, exc.strerror or exc))
    elf_hash = None
    try:
        elf_hash = _HashInBackground(fd, elf_path)
        return _check(stream_path, elf_path, fd, domain, started, elf_hash)
    finally:
        if elf_hash is not None:
            elf_hash.join()     # before the descriptor it reads is closed
        os.close(fd)


class _HashInBackground:
    """SHA-256 of an open file on the other CPU while the check reads the stream (hashlib lets go of the GIL)."""

    def __init__(self, fd, path):
        self._path = path
        self._result = self._error = None
        self._thread = threading.Thread(target=self._run, args=(fd,), daemon=True)
        self._thread.start()

    def _run(self, fd):
        try:
            self._result = custody_log.sha256_fd(fd)[1]
        except OSError as exc:
            self._error = exc

    def join(self):
        self._thread.join()

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise ConvertError('cannot read the ELF %s: %s' % (self._path, self._error.strerror or self._error))
        return self._result


def _check(stream_path, elf_path, fd, domain, started, elf_hash):
    try:
        loads = elfcore.read_loads(fd, elf_path)
        notes = elfcore.read_block_notes(fd, elf_path)
    except elfcore.ElfError as exc:
        raise ConvertError(str(exc))
    # Every area of the file that holds guest memory: PT_LOADs by address, MEMDUMP notes by block and offset.
    areas = sorted([(offset, length, phys, None) for phys, length, offset in loads] +
                   [(data, length, block_offset, block) for block, block_offset, length, data in notes])
    area_starts = [area[0] for area in areas]
    note_map = {}
    for block, block_offset, length, data in notes:
        note_map.setdefault(block, []).append((block_offset, block_offset + length, data - block_offset))

    def describe(page):
        """A page of the file as the analyst knows it: its guest-physical address, or block+offset."""
        start, _length, base, block = areas[bisect.bisect_right(area_starts, page * qs.PAGE_SIZE) - 1]
        where = base + page * qs.PAGE_SIZE - start
        return '0x%x' % where if block is None else '%s+0x%x' % (block, where)

    stream = qs.Stream()
    seen = PageBits()
    final_ok = PageBits()       # the latest version of the page (so far) equals the ELF's page
    state = {'placement': None}
    problems = {'layout': [], 'missing': []}
    counts = {'records': 0, 'apart_records': 0}
    starts = [load[0] for load in loads]

    def elf_offset(phys):
        # The ELF's own program headers decide where a physical page is, not the converter's arithmetic.
        lo, hi = 0, len(starts)
        while lo < hi:
            mid = (lo + hi) // 2
            if starts[mid] <= phys:
                lo = mid + 1
            else:
                hi = mid
        if lo and phys < loads[lo - 1][0] + loads[lo - 1][1]:
            return loads[lo - 1][2] + phys - loads[lo - 1][0]
        return None

    def place():
        try:
            segments, apart = qs.plan_layout(stream, domain)
        except qs.StreamError as exc:
            raise ConvertError('%s: %s' % (stream_path, exc))
        expected = [(s.phys, s.length) for s in segments]
        actual = [(p, n) for p, n, _o in loads]
        if expected != actual:
            problems['layout'].append('the ELF\'s PT_LOADs %s differ from the layout the stream gives %s'
                                      % (_ranges(actual), _ranges(expected)))
        expected_notes = sorted((a.block, a.block_offset, a.length) for a in apart)
        actual_notes = sorted((block, block_offset, length) for block, block_offset, length, _data in notes)
        if expected_notes != actual_notes:
            problems['layout'].append('the ELF\'s MEMDUMP notes %s differ from what the stream carries apart %s'
                                      % (actual_notes, expected_notes))
        state['placement'] = _Placement(stream, [(s.phys, s.length, s.block, s.block_offset, 0) for s in segments])
        return state['placement']

    def page_at(block, offset):
        placement = state['placement'] or place()
        counts['records'] += 1
        phys = placement.phys(block, offset)
        if phys is not None:
            where, label = elf_offset(phys), '0x%x' % phys
        else:
            counts['apart_records'] += 1
            name = stream.blocks[block][0]
            where, label = None, '%s+0x%x' % (name, offset)
            for start, end, delta in note_map.get(name, ()):
                if start <= offset < end:
                    where = offset + delta
                    break
        if where is None:
            if len(problems['missing']) < MAX_LISTED:
                problems['missing'].append(label)
            problems.setdefault('missing_count', 0)
            problems['missing_count'] += 1
            return None, None
        seen.set(where // qs.PAGE_SIZE)
        return phys, where

    def on_page(block, offset, data, _at):
        _phys, where = page_at(block, offset)
        if where is not None:
            final_ok.set(where // qs.PAGE_SIZE, os.pread(fd, qs.PAGE_SIZE, where) == data)

    # A zero page in a hole of the sparse ELF reads as zero without reading it.
    extents = [extent for offset, length, _base, _block in areas for extent in elfcore.data_extents(fd, offset, offset + length)]
    extent_starts = [extent[0] for extent in extents]

    def in_hole(where):
        index = bisect.bisect_right(extent_starts, where) - 1
        return index < 0 or where >= extents[index][1]

    def in_hole_range(where, length):
        index = bisect.bisect_right(extent_starts, where)
        return (index == 0 or where >= extents[index - 1][1]) and (index == len(extents) or extents[index][0] >= where + length)

    def on_zero(block, offset, fill):
        _phys, where = page_at(block, offset)
        if where is not None:
            if not fill and in_hole(where):
                final_ok.set(where // qs.PAGE_SIZE, True)
            else:
                final_ok.set(where // qs.PAGE_SIZE, os.pread(fd, qs.PAGE_SIZE, where) == bytes([fill]) * qs.PAGE_SIZE)

    def span(block, offset, count):
        """``(where, pages)``: the ELF offset of the page and how many of the ``count`` pages from it on
        lie in one PT_LOAD, each after the other; where is None (for one page) when the page's own
        path must decide (a page kept apart or missing)."""
        placement = state['placement'] or place()
        pages, _delta, phys = placement.run(block, offset, count)
        if phys is None:
            return None, 1
        phys += offset
        index = bisect.bisect_right(starts, phys) - 1
        if index < 0:
            return None, 1
        load_phys, load_length, load_offset = loads[index]
        pages = min(pages, (load_phys + load_length - phys) // qs.PAGE_SIZE)
        if pages < 1:
            return None, 1
        return load_offset + phys - load_phys, pages

    def on_zeros(block, offset, count):
        while count:
            where, pages = span(block, offset, count)
            length = pages * qs.PAGE_SIZE
            if where is not None and (in_hole_range(where, length) or not os.pread(fd, length, where).lstrip(b'\0')):
                counts['records'] += pages
                seen.set_range(where >> 12, pages)
                final_ok.set_range(where >> 12, pages)
            else:
                for index in range(pages):
                    on_zero(block, offset + index * qs.PAGE_SIZE, 0)
            offset += length
            count -= pages

    def on_pages(block, offset, count, buf, pos):
        view = memoryview(buf)
        while count:
            where, pages = span(block, offset, count)
            length = pages * qs.PAGE_SIZE
            carried = b''.join([view[at:at + qs.PAGE_SIZE] for at in range(pos + 8, pos + pages * qs.PAGE_RECORD, qs.PAGE_RECORD)])
            if where is None:
                on_page(block, offset, carried, None)
            else:
                counts['records'] += pages
                first = where >> 12
                seen.set_range(first, pages)
                in_elf = os.pread(fd, length, where)
                if in_elf == carried:
                    final_ok.set_range(first, pages)
                else:
                    for index in range(pages):
                        at = index * qs.PAGE_SIZE
                        final_ok.set(first + index, in_elf[at:at + qs.PAGE_SIZE] == carried[at:at + qs.PAGE_SIZE])
            offset += length
            pos += pages * qs.PAGE_RECORD
            count -= pages

    digest = hashlib.sha256()
    with _open_stream(stream_path) as handle:
        ahead = qs.ReadAhead(handle, stream_path, digest)
        reader = qs.Reader(ahead, stream_path)
        try:
            qs.read_stream(reader, stream, on_page, on_zero, qs.Runs(on_zeros, on_pages))
            ahead.finish()
        except qs.StreamError as exc:
            raise ConvertError(str(exc))
        finally:
            ahead.close()
    if state['placement'] is None:
        place()
    # Every page the stream carried: its final version must be the ELF's (bit operations on whole chunks).
    carried, mismatch_count, mismatched = 0, 0, []
    for index, seen_bits in seen.chunks():
        seen_int = int.from_bytes(seen_bits, 'little')
        carried += bin(seen_int).count('1')
        bad = seen_int & ~int.from_bytes(final_ok.chunk(index), 'little')
        while bad:
            low = bad & -bad
            mismatch_count += 1
            if len(mismatched) < MAX_LISTED:
                mismatched.append(describe(index * PageBits.CHUNK_PAGES + low.bit_length() - 1))
            bad ^= low
    # Pages the stream never carried must read as zero; only data extents can hold anything else.
    stray = []
    stray_count = 0
    for start, end in extents:
        for page in range(start // qs.PAGE_SIZE, -(-end // qs.PAGE_SIZE)):
            if not seen.get(page) and os.pread(fd, qs.PAGE_SIZE, page * qs.PAGE_SIZE) != ZERO_PAGE:
                stray_count += 1
                if len(stray) < MAX_LISTED:
                    stray.append(describe(page))
    elf_sha = elf_hash.result()
    ok = not (problems['layout'] or mismatch_count or problems.get('missing_count') or stray_count)
    return {
        'ok': ok,
        'stream_sha256': digest.hexdigest(),
        'elf_sha256': elf_sha,
        'pages_checked': carried,
        'pages_equal': carried - mismatch_count,
        'pages_mismatched': mismatch_count,
        'first_mismatched': mismatched,
        'pages_missing_from_elf': problems.get('missing_count', 0),
        'first_missing': problems['missing'],
        'elf_pages_not_in_stream_nonzero': stray_count,
        'first_not_in_stream': stray,
        'records_kept_apart': counts['apart_records'],
        'layout_problems': problems['layout'],
        'check_sec': round(time.monotonic() - started, 3),
    }


def _utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def _ranges(pairs):
    return ', '.join('0x%x-0x%x' % (start, start + length) for start, length in pairs)


def main(argv=None):
    """The standalone command: convert, check, print the report as JSON; exit 0 only if the check passed."""
    parser = argparse.ArgumentParser(
        prog='qevm2elf',
        description='Convert a live dump (QEMU migration stream, .qevm) into an ELF64 core laid out as QEMU\'s memory-only dump, '
                    'then check every page against the stream. The stream is never modified.')
    parser.add_argument('stream', help='the .qevm file of the live dump')
    parser.add_argument('elf', help='the ELF file to write (must not exist)')
    parser.add_argument('--domain-xml', metavar='FILE', help='the domain XML recorded with the dump (places NUMA cells and DIMMs)')
    parser.add_argument('--check-only', action='store_true', help='only check an existing ELF against the stream')
    parser.add_argument('--report', metavar='FILE', help='also write the JSON report to FILE')
    args = parser.parse_args(argv)
    try:
        xml = None
        if args.domain_xml:
            try:
                with open(args.domain_xml, 'rb') as handle:
                    xml = handle.read(qs.MAX_DOMAIN_XML_BYTES + 1)
            except OSError as exc:
                raise ConvertError('cannot read the domain XML %s: %s' % (args.domain_xml, exc.strerror or exc))
        if args.check_only:
            report = {'check': check(args.stream, args.elf, xml)}
        else:
            report = convert(args.stream, args.elf, xml)
    except ConvertError as exc:
        sys.stderr.write('qevm2elf: %s\n' % exc)
        return 2
    text = json.dumps(report, indent=2, sort_keys=True)
    sys.stdout.write(text + '\n')
    if args.report:
        with open(args.report, 'w') as handle:
            handle.write(text + '\n')
    if not report['check']['ok']:
        sys.stderr.write('qevm2elf: the check FAILED: the ELF does not hold the stream\'s final pages (see "check" above)\n')
        return 1
    for block in report.get('blocks', []):
        for item in block.get('kept_apart', []):
            sys.stderr.write('qevm2elf: note: %s is in the ELF as a MEMDUMP note, not as guest-physical memory: %s\n'
                             % (item['range'], item['reason']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
