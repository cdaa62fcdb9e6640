# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Property-based tests of the live-dump converter (hypothesis): a compromised hypervisor writes the
stream, so any truncation or mutation of a valid stream must end in a ConvertError (never another
exception, never a partial ELF, never unbounded memory) or in an ELF that passes the page check; and
for any sequence of page versions the ELF holds the last one of each page."""

from __future__ import annotations

import os
import struct
import tempfile
import tracemalloc

from hypothesis import HealthCheck, given, settings, strategies as st

from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _qevm2elf as conv
from ansible_collections.vmforensics.memdump.tests.unit.plugins.plugin_utils.qevm_samples import PAGE, StreamWriter, page_of

RAM = 1 << 20       # a 1 MiB guest keeps each example fast; the format is the same at any size
BLOCKS = [('pc.ram', RAM), ('pc.bios', 64 << 10), ('pc.rom', 32 << 10)]
SETTINGS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_stream():
    writer = StreamWriter(blocks=BLOCKS)
    for index in range(6):
        writer.page('pc.ram', index * PAGE, page_of('page %d' % index))
    writer.zero('pc.ram', 6 * PAGE).page('pc.bios', 0, page_of('bios')).page('pc.rom', 0, page_of('rom'))
    writer.next_part().page('pc.ram', 2 * PAGE, page_of('page 2 again')).zero('pc.ram', 3 * PAGE)
    writer.next_part().page('pc.ram', 9 * PAGE, page_of('last part'))
    return writer.build()


VALID = _valid_stream()


def _run(data):
    """Convert ``data``; return the report or the ConvertError. Anything else fails the test."""
    with tempfile.TemporaryDirectory() as tmp:
        stream = os.path.join(tmp, 'vm.qevm')
        elf = os.path.join(tmp, 'vm.elf')
        with open(stream, 'wb') as handle:
            handle.write(data)
        tracemalloc.start()
        try:
            result = conv.convert(stream, elf)
            assert os.path.exists(elf)
        except conv.ConvertError as exc:
            assert str(exc) and 'Traceback' not in str(exc)
            assert not os.path.exists(elf), 'a failed conversion left %s behind' % elf
            result = exc
        finally:
            _current, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        # Whatever sizes the stream claims, memory follows its real length (16 MiB read buffer + the page maps).
        assert peak < 64 << 20
        return result


def test_the_valid_stream_converts():
    result = _run(VALID)
    assert not isinstance(result, Exception) and result['check']['ok']


@SETTINGS
@given(st.integers(min_value=0, max_value=len(VALID) - 1))
def test_any_truncation_is_a_clear_error(cut):
    result = _run(VALID[:cut])
    assert isinstance(result, conv.ConvertError)


@SETTINGS
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=len(VALID) - 1), st.integers(min_value=0, max_value=255)),
                min_size=1, max_size=8))
def test_mutated_bytes_give_an_error_or_a_checked_elf(changes):
    data = bytearray(VALID)
    for position, value in changes:
        data[position] = value
    result = _run(bytes(data))
    if not isinstance(result, Exception):
        # The converter accepted it (e.g. a changed page byte): then the ELF holds that stream's pages.
        assert result['check']['ok'] is True


@SETTINGS
@given(st.integers(min_value=0, max_value=len(VALID) - 8), st.sampled_from([0, 1, 0xFFFFFFFF, 0x7FFFFFFFFFFFFFFF, 1 << 40, 0x1234567890]))
def test_huge_numbers_anywhere_give_an_error_or_a_checked_elf(position, number):
    data = bytearray(VALID)
    data[position:position + 8] = struct.pack('>Q', number)
    result = _run(bytes(data))
    if not isinstance(result, Exception):
        assert result['check']['ok'] is True


@SETTINGS
@given(st.binary(min_size=0, max_size=4096))
def test_garbage_after_the_magic_is_a_clear_error(tail):
    assert isinstance(_run(b'QEVM\x00\x00\x00\x03' + tail), conv.ConvertError)


_VERSIONS = st.lists(
    st.lists(st.tuples(st.integers(min_value=0, max_value=RAM // PAGE - 1), st.one_of(st.none(), st.binary(min_size=1, max_size=16))),
             max_size=12),
    min_size=1, max_size=4)


@SETTINGS
@given(_VERSIONS)
def test_the_last_version_of_every_page_is_in_the_elf(parts):
    """Pages sent and re-sent over several iterations (None: a zero page): the ELF equals a model that
    keeps the last version of each page."""
    writer = StreamWriter(blocks=BLOCKS)
    model = {}
    for number, records in enumerate(parts):
        if number:
            writer.next_part()
        for page, content in records:
            if content is None:
                writer.zero('pc.ram', page * PAGE)
                model[page] = bytes(PAGE)
            else:
                writer.page('pc.ram', page * PAGE, page_of(content, fill=0x5A))
                model[page] = page_of(content, fill=0x5A)
    with tempfile.TemporaryDirectory() as tmp:
        stream = os.path.join(tmp, 'vm.qevm')
        elf = os.path.join(tmp, 'vm.elf')
        with open(stream, 'wb') as handle:
            handle.write(writer.build())
        report = conv.convert(stream, elf)
        assert report['check']['ok'] is True
        with open(elf, 'rb') as handle:
            image = handle.read()
    headers = [struct.unpack_from('<IIQQQQQQ', image, 64 + i * 56) for i in range(struct.unpack_from('<H', image, 56)[0])]
    ram_offset = [h[2] for h in headers if h[0] == 1 and h[4] == 0][0]     # p_offset of the PT_LOAD at physical 0
    for page in range(RAM // PAGE):
        assert image[ram_offset + page * PAGE:ram_offset + (page + 1) * PAGE] == model.get(page, bytes(PAGE)), 'page %d' % page
