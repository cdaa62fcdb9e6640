# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The live-dump converter on streams written as QEMU writes them (tests/unit/.../qevm_samples.py):
where pages land, which version wins, what the check catches, what is refused and how."""

from __future__ import annotations

import json
import os
import struct

import pytest

from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _qevm2elf as conv
from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _qemu_stream as qs
from ansible_collections.vmforensics.memdump.tests.unit.plugins.plugin_utils.qevm_samples import (
    PAGE, StreamWriter, name, page_of)

MIB = 1 << 20
GIB = 1 << 30


def write(tmp_path, writer, **kwargs):
    path = tmp_path / 'vm.qevm'
    path.write_bytes(writer.build(**kwargs) if isinstance(writer, StreamWriter) else writer)
    return str(path)


def loads(elf):
    """(phys, length, file offset) of each PT_LOAD, read with struct as any ELF reader would."""
    with open(elf, 'rb') as handle:
        head = handle.read(64)
        assert head[:4] == b'\x7fELF' and struct.unpack_from('<H', head, 16)[0] == 4   # ET_CORE
        phoff, = struct.unpack_from('<Q', head, 32)
        phnum, = struct.unpack_from('<H', head, 56)
        handle.seek(phoff)
        table = handle.read(56 * phnum)
    out = []
    for i in range(phnum):
        p_type, _f, offset, vaddr, paddr, filesz, memsz, _a = struct.unpack_from('<IIQQQQQQ', table, i * 56)
        if p_type == 1:     # PT_LOAD; the PT_NOTE holds what has no guest-physical address
            assert filesz == memsz and vaddr == paddr
            out.append((paddr, filesz, offset))
    return out


def note_data(elf, block, offset, length=PAGE):
    """Bytes of a block kept apart, read from its MEMDUMP note (PT_NOTE, name MEMDUMP, type 0x4d440001)."""
    with open(elf, 'rb') as handle:
        image = handle.read()
    phoff, = struct.unpack_from('<Q', image, 32)
    phnum, = struct.unpack_from('<H', image, 56)
    for i in range(phnum):
        p_type, _f, start, _v, _p, size, _m, _a = struct.unpack_from('<IIQQQQQQ', image, phoff + i * 56)
        cursor = start
        while p_type == 4 and cursor < start + size:
            namesz, descsz, n_type = struct.unpack_from('<III', image, cursor)
            desc = cursor + 12 + (namesz + 3) // 4 * 4
            skip, block_offset, span, name_len = struct.unpack_from('<QQQH', image, desc)
            name = image[desc + 26:desc + 26 + name_len].decode()
            if n_type == 0x4D440001 and name == block and block_offset <= offset < block_offset + span:
                at = desc + skip + offset - block_offset
                assert at % PAGE == 0      # page-aligned, so zero pages stay holes
                return image[at:at + length]
            cursor = desc + (descsz + 3) // 4 * 4
    raise AssertionError('no MEMDUMP note holds %s+0x%x' % (block, offset))


def read_phys(elf, phys, length=PAGE):
    for start, size, offset in loads(elf):
        if start <= phys < start + size:
            with open(elf, 'rb') as handle:
                handle.seek(offset + phys - start)
                return handle.read(length)
    raise AssertionError('0x%x is in no PT_LOAD' % phys)


def test_small_pc_guest_pages_at_their_addresses_and_check_passes(tmp_path):
    writer = StreamWriter()
    writer.page('pc.ram', 0x10000, page_of('low')).page('pc.ram', 0x11000, page_of('next'))
    writer.zero('pc.ram', 0x12000).page('pc.bios', 0x3F000, page_of('reset vector'))
    writer.page('pc.rom', 0, page_of('option rom'))
    stream = write(tmp_path, writer)
    elf = str(tmp_path / 'vm.elf')
    report = conv.convert(stream, elf)

    assert [(p, n) for p, n, _o in loads(elf)] == [(0, 128 * MIB), (4 * GIB - 256 * 1024, 256 * 1024)]
    assert read_phys(elf, 0x10000) == page_of('low')
    assert read_phys(elf, 0x11000) == page_of('next')
    assert read_phys(elf, 0x12000) == bytes(PAGE)
    assert read_phys(elf, 4 * GIB - PAGE) == page_of('reset vector')
    assert report['check']['ok'] is True
    assert report['check']['pages_checked'] == 5
    assert report['stream']['sha256'] == report['check']['stream_sha256'] == _sha(stream)
    assert report['elf']['sha256'] == _sha(elf)
    assert report['converter_version'] == conv.CONVERTER_VERSION
    # The option ROM has no guest-physical address: it is kept in a MEMDUMP note, so the ELF has every page.
    rom = [b for b in report['blocks'] if b['name'] == 'pc.rom'][0]
    assert 'placed' not in rom and rom['kept_apart'][0]['range'] == 'pc.rom' and rom['records'] == 1
    assert note_data(elf, 'pc.rom', 0) == page_of('option rom')
    assert report['pages']['records_kept_apart'] == 1 and report['pages']['records_not_in_elf'] == 0
    # Sparse: the 128 MiB of RAM the stream did not fill take no disk space.
    assert os.stat(elf).st_blocks * 512 < 4 * MIB
    json.dumps(report)      # plain JSON types only: the custody event takes it as it is


def _sha(path):
    import hashlib
    with open(path, 'rb') as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def test_last_version_of_a_page_wins_and_a_later_zero_clears_it(tmp_path):
    writer = StreamWriter()
    writer.page('pc.ram', 0x5000, page_of('first')).page('pc.ram', 0x6000, page_of('stays'))
    writer.next_part().page('pc.ram', 0x5000, page_of('second')).page('pc.ram', 0x6000, page_of('then zero'))
    writer.next_part().zero('pc.ram', 0x6000).page('pc.ram', 0x5000, page_of('final'))
    stream = write(tmp_path, writer)
    elf = str(tmp_path / 'vm.elf')
    report = conv.convert(stream, elf)
    assert read_phys(elf, 0x5000) == page_of('final')
    assert read_phys(elf, 0x6000) == bytes(PAGE)
    assert report['pages']['superseded_versions'] == 4
    assert report['check']['ok'] is True


def test_pc_guest_above_3_5_gib_keeps_3_gib_below_the_pci_hole(tmp_path):
    writer = StreamWriter(blocks=[('pc.ram', 4608 * MIB), ('pc.bios', 256 << 10)])
    writer.page('pc.ram', 0x10000000, page_of('below 4 GiB'))
    writer.page('pc.ram', 3 * GIB, page_of('first page above 4 GiB'))
    writer.page('pc.ram', 0x140000000 - GIB, page_of('at 5 GiB'))
    elf = str(tmp_path / 'vm.elf')
    conv.convert(write(tmp_path, writer), elf, verify=False)
    assert [(p, n) for p, n, _o in loads(elf)] == [(0, 3 * GIB), (4 * GIB - (256 << 10), 256 << 10), (4 * GIB, 1536 * MIB)]
    assert read_phys(elf, 0x10000000) == page_of('below 4 GiB')
    assert read_phys(elf, 4 * GIB) == page_of('first page above 4 GiB')
    assert read_phys(elf, 0x140000000) == page_of('at 5 GiB')


def test_pc_guest_of_3_25_gib_stays_below_4_gib(tmp_path):
    writer = StreamWriter(blocks=[('pc.ram', 3328 * MIB), ('pc.bios', 256 << 10)])
    writer.page('pc.ram', 3328 * MIB - PAGE, page_of('top'))
    elf = str(tmp_path / 'vm.elf')
    conv.convert(write(tmp_path, writer), elf, verify=False)
    assert [(p, n) for p, n, _o in loads(elf)][0] == (0, 3328 * MIB)
    assert read_phys(elf, 3328 * MIB - PAGE) == page_of('top')


def test_q35_numa_cells_are_concatenated_and_split_at_2_gib(tmp_path):
    """Two RAM blocks (NUMA cells): the second straddles the PCI hole, as QEMU's own ELF shows it."""
    blocks = [('ram-node0', 1536 * MIB), ('ram-node1', 1536 * MIB), ('pc.bios', 256 << 10), ('pc.rom', 128 << 10)]
    writer = StreamWriter(machine='pc-q35-7.2', blocks=blocks)
    writer.page('ram-node1', 0, page_of('node1 start'))
    writer.page('ram-node1', 512 * MIB, page_of('node1 above 4 GiB'))
    writer.page('ram-node0', 0x10000000, page_of('node0'))
    elf = str(tmp_path / 'vm.elf')
    domain = ("<domain type='qemu'><name>g</name><memory unit='MiB'>3072</memory><os><type machine='pc-q35-7.2'>hvm</type></os>"
              "<cpu><numa><cell id='0' cpus='0' memory='1536' unit='MiB'/><cell id='1' cpus='1' memory='1536' unit='MiB'/></numa></cpu></domain>")
    report = conv.convert(write(tmp_path, writer), elf, domain_xml=domain, verify=False)
    assert [(p, n) for p, n, _o in loads(elf)] == [
        (0, 1536 * MIB), (1536 * MIB, 512 * MIB), (4 * GIB - (256 << 10), 256 << 10), (4 * GIB, GIB)]
    assert read_phys(elf, 1536 * MIB) == page_of('node1 start')
    assert read_phys(elf, 4 * GIB) == page_of('node1 above 4 GiB')
    assert read_phys(elf, 0x10000000) == page_of('node0')
    assert report['domain_xml_used'] is True


def test_a_vga_device_takes_the_legacy_window_out_of_ram(tmp_path):
    """With a VGA-compatible video device (block .../vga.vram), 0xa0000-0xc0000 is the device's, as in QEMU's
    own ELF of such a guest: the RAM behind it is named in the report, not shown as guest-physical memory."""
    blocks = [('pc.ram', 256 * MIB), ('0000:00:02.0/vga.vram', 16 * MIB), ('pc.bios', 256 << 10)]
    writer = StreamWriter(blocks=blocks)
    writer.page('pc.ram', 0x9F000, page_of('below the window')).page('pc.ram', 0xA0000, page_of('behind the window'))
    writer.page('pc.ram', 0xC0000, page_of('above the window')).page('0000:00:02.0/vga.vram', 0, page_of('framebuffer'))
    elf = str(tmp_path / 'vm.elf')
    report = conv.convert(write(tmp_path, writer), elf)
    assert [(p, n) for p, n, _o in loads(elf)] == [(0, 0xA0000), (0xC0000, 256 * MIB - 0xC0000), (4 * GIB - (256 << 10), 256 << 10)]
    assert read_phys(elf, 0x9F000) == page_of('below the window') and read_phys(elf, 0xC0000) == page_of('above the window')
    ram = [b for b in report['blocks'] if b['name'] == 'pc.ram'][0]
    assert [k['range'] for k in ram['kept_apart']] == ['pc.ram [0xa0000-0xc0000)']
    assert note_data(elf, 'pc.ram', 0xA0000) == page_of('behind the window')
    vram = [b for b in report['blocks'] if b['name'].endswith('vga.vram')][0]
    assert 'PCI BAR' in vram['kept_apart'][0]['reason'] and note_data(elf, '0000:00:02.0/vga.vram', 0) == page_of('framebuffer')
    assert report['check']['ok'] is True and report['pages']['records_kept_apart'] == 2


def test_numa_cells_without_memory_backends_are_one_block(tmp_path):
    """QEMU given "-numa node,mem=" (no memory backends) keeps one pc.ram whatever cells the domain XML has."""
    writer = StreamWriter(machine='pc-q35-7.2', blocks=[('pc.ram', 3 * GIB), ('pc.bios', 256 << 10)])
    writer.page('pc.ram', 2 * GIB, page_of('first above 4 GiB'))
    domain = ("<domain><memory unit='GiB'>3</memory><os><type machine='pc-q35-7.2'>hvm</type></os><cpu><numa>"
              "<cell id='0' memory='1536' unit='MiB'/><cell id='1' memory='1536' unit='MiB'/></numa></cpu></domain>")
    elf = str(tmp_path / 'vm.elf')
    conv.convert(write(tmp_path, writer), elf, domain_xml=domain, verify=False)
    assert read_phys(elf, 4 * GIB) == page_of('first above 4 GiB')


def test_domain_xml_of_another_guest_is_refused(tmp_path):
    writer = StreamWriter(machine='pc-q35-7.2', blocks=[('ram-node0', 64 * MIB), ('ram-node1', 64 * MIB)])
    domain = ("<domain><memory unit='MiB'>128</memory><os><type machine='pc-q35-7.2'>hvm</type></os><cpu><numa>"
              "<cell id='0' memory='32' unit='MiB'/><cell id='1' memory='96' unit='MiB'/></numa></cpu></domain>")
    with pytest.raises(conv.ConvertError, match="NUMA cell 0 33554432 bytes.*not this stream's domain XML"):
        conv.convert(write(tmp_path, writer), str(tmp_path / 'vm.elf'), domain_xml=domain)
    assert not (tmp_path / 'vm.elf').exists()
    pc_xml = "<domain><memory unit='MiB'>256</memory><os><type machine='pc-i440fx-7.2'>hvm</type></os></domain>"
    with pytest.raises(conv.ConvertError, match="pc-i440fx-7.2 machine, the stream a pc-q35-7.2"):
        conv.convert(write(tmp_path, writer), str(tmp_path / 'vm.elf'), domain_xml=pc_xml)


def test_dimm_is_placed_at_the_base_the_domain_xml_records(tmp_path):
    writer = StreamWriter(blocks=[('pc.ram', 256 * MIB), ('memdimm0', 128 * MIB), ('pc.bios', 256 << 10)])
    writer.page('memdimm0', 0x1000, page_of('hotplugged'))
    domain = ("<domain><memory unit='MiB'>384</memory><os><type machine='pc-i440fx-7.2'>hvm</type></os><devices>"
              "<memory model='dimm'><target><size unit='MiB'>128</size></target><alias name='dimm0'/>"
              "<address type='dimm' slot='0' base='0x100000000'/></memory></devices></domain>")
    elf = str(tmp_path / 'vm.elf')
    conv.convert(write(tmp_path, writer), elf, domain_xml=domain, verify=False)
    assert read_phys(elf, 0x100001000) == page_of('hotplugged')
    # Without the XML the DIMM's place is unknown: it is named, not guessed.
    report = conv.convert(write(tmp_path, writer), str(tmp_path / 'other.elf'), verify=False)
    dimm = [b for b in report['blocks'] if b['name'] == 'memdimm0'][0]
    assert 'domain XML' in dimm['kept_apart'][0]['reason']


def test_check_catches_a_changed_page_a_stray_page_and_another_layout(tmp_path):
    writer = StreamWriter()
    writer.page('pc.ram', 0x20000, page_of('evidence'))
    stream = write(tmp_path, writer)
    elf = str(tmp_path / 'vm.elf')
    conv.convert(stream, elf)
    offset = [o for p, _n, o in loads(elf) if p == 0][0]
    with open(elf, 'r+b') as handle:
        handle.seek(offset + 0x20000 + 100)
        handle.write(b'X')
        handle.seek(offset + 0x30000)
        handle.write(b'planted')
    result = conv.check(stream, elf)
    assert result['ok'] is False
    assert result['pages_mismatched'] == 1 and result['first_mismatched'] == ['0x20000']
    assert result['elf_pages_not_in_stream_nonzero'] == 1 and result['first_not_in_stream'] == ['0x30000']
    # A stream whose RAM is larger than the ELF covers: its layout differs and its pages are missing.
    bigger = StreamWriter(blocks=[('pc.ram', 256 * MIB), ('pc.bios', 256 << 10), ('pc.rom', 128 << 10)])
    bigger.page('pc.ram', 200 * MIB, page_of('beyond'))
    result = conv.check(write(tmp_path, bigger), elf)
    assert result['ok'] is False and result['layout_problems'] and result['first_missing'] == ['0xc800000']


def test_existing_output_is_never_overwritten(tmp_path):
    elf = tmp_path / 'vm.elf'
    elf.write_bytes(b'earlier evidence')
    with pytest.raises(conv.ConvertError, match='already exists.*never overwrites'):
        conv.convert(write(tmp_path, StreamWriter()), str(elf))
    assert elf.read_bytes() == b'earlier evidence'


@pytest.mark.parametrize('mutate, message', [
    (lambda w: w.raw(struct.pack('>Q', 0x1000 | 0x40 | 0x20) + b'\x01\x00\x10' + bytes(16)), 'XBZRLE'),
    (lambda w: w.raw(struct.pack('>Q', 0x1000 | 0x100 | 0x20) + struct.pack('>I', 4) + b'abcd'), 'compressed page'),
    (lambda w: w.raw(struct.pack('>Q', 0x200)), 'multifd'),
    (lambda w: w.raw(struct.pack('>Q', 0x1000 | 0x08) + name('vga.vram') + bytes(PAGE)), "names RAM block 'vga.vram'"),
    (lambda w: w.raw(struct.pack('>Q', (256 * MIB) | 0x08 | 0x20) + bytes(PAGE)), 'beyond its'),
])
def test_records_it_does_not_handle_are_refused_by_name(tmp_path, mutate, message):
    writer = StreamWriter()
    writer.page('pc.ram', 0, page_of('a'))
    mutate(writer)
    elf = tmp_path / 'vm.elf'
    with pytest.raises(conv.ConvertError, match=message):
        conv.convert(write(tmp_path, writer), str(elf))
    assert not elf.exists()


def _replace(data, old, new):
    assert old in data
    return data.replace(old, new, 1)


@pytest.mark.parametrize('edit, message', [
    (lambda d: b'QFVM' + d[4:], 'does not start with .*QEVM.*not a live dump'),
    (lambda d: d[:4] + struct.pack('>I', 2) + d[8:], 'version 2 is not handled'),
    (lambda d: _replace(d, b'\x07\x00\x00\x00\x0dpc-i440fx-7.2', b'\x07\x00\x00\x00\x07microvm'), "machine type 'microvm' is not handled"),
    (lambda d: _replace(d, b'\x01\x00\x00\x00\x02\x03ram', b'\x01\x00\x00\x00\x02\x03blk'), "iterative section 'blk'.*not handled"),
    (lambda d: _replace(d, b'\x01\x00\x00\x00\x02\x03ram', b'\x08\x00\x03\x00\x00'), 'POSTCOPY_ADVISE'),
    (lambda d: _replace(d, b'\x04\x00\x00\x00\x03\x05timer', b'\x08\x00\x0b\x00\x01\x00\x04\x00\x00\x00\x03\x05timer'), 'SWITCHOVER_START'),
    (lambda d: _replace(d, b'\x01\x00\x00\x00\x02\x03ram', b'\x42'), 'section type 0x42'),
    (lambda d: d[:-10], 'device description.*truncated'),
    (lambda d: d[:200], 'truncated'),
])
def test_streams_it_does_not_handle_or_broken_ones_end_in_a_clear_error(tmp_path, edit, message):
    writer = StreamWriter()
    writer.page('pc.ram', 0, page_of('a'))
    with pytest.raises(conv.ConvertError, match=message):
        conv.convert(write(tmp_path, edit(writer.build())), str(tmp_path / 'vm.elf'))
    assert not (tmp_path / 'vm.elf').exists()


def test_qemu_10_switchover_start_before_device_state_is_accepted(tmp_path):
    """QEMU 10 puts an empty SWITCHOVER_START command between the RAM and the device state."""
    writer = StreamWriter(machine='pc-q35-10.0', blocks=[('pc.ram', 64 << 20), ('pc.bios', 256 << 10)])
    writer.page('pc.ram', 0x3000, page_of('qemu 10'))
    data = _replace(writer.build(), b'\x04\x00\x00\x00\x03\x05timer', b'\x08\x00\x0b\x00\x00\x04\x00\x00\x00\x03\x05timer')
    elf = str(tmp_path / 'vm.elf')
    assert conv.convert(write(tmp_path, data), elf)['check']['ok'] is True
    assert read_phys(elf, 0x3000) == page_of('qemu 10')


def test_capabilities_that_change_the_format_are_refused(tmp_path):
    writer = StreamWriter(capabilities=['mapped-ram'])
    with pytest.raises(conv.ConvertError, match='mapped-ram'):
        conv.convert(write(tmp_path, writer), str(tmp_path / 'vm.elf'))
    writer = StreamWriter(subsections=b'\x05' + name('configuration/something-new') + struct.pack('>I', 1))
    with pytest.raises(conv.ConvertError, match="configuration subsection 'configuration/something-new'"):
        conv.convert(write(tmp_path, writer), str(tmp_path / 'vm.elf'))


def test_claimed_sizes_do_not_become_allocations(tmp_path):
    """A block claiming 2^50 bytes is refused before anything is allocated; one within the limit costs
    memory only for the pages that arrive."""
    import tracemalloc
    huge = StreamWriter(blocks=[('pc.ram', 1 << 50)])
    with pytest.raises(conv.ConvertError, match='claims 1048576 GiB of RAM'):
        conv.convert(write(tmp_path, huge), str(tmp_path / 'vm.elf'))
    writer = StreamWriter(machine='pc-q35-7.2', blocks=[('pc.ram', 512 * GIB)])
    for index in range(64):
        writer.zero('pc.ram', index * 7 * GIB + PAGE * index)
    tracemalloc.start()
    conv.convert(write(tmp_path, writer), str(tmp_path / 'big.elf'), verify=False)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 32 * MIB


def test_domain_xml_with_entities_is_refused(tmp_path):
    xml = '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa">]><domain><memory>&a;</memory></domain>'
    with pytest.raises(conv.ConvertError, match='DTD or entities'):
        conv.convert(write(tmp_path, StreamWriter()), str(tmp_path / 'vm.elf'), domain_xml=xml)


def test_command_converts_checks_and_reports(tmp_path, capsys):
    writer = StreamWriter()
    writer.page('pc.ram', 0x7000, page_of('cli'))
    stream = write(tmp_path, writer)
    elf = str(tmp_path / 'vm.elf')
    assert conv.main([stream, elf, '--report', str(tmp_path / 'report.json')]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out['check']['ok'] is True and json.loads((tmp_path / 'report.json').read_text()) == out
    assert conv.main([stream, elf, '--check-only']) == 0
    assert json.loads(capsys.readouterr().out)['check']['ok'] is True
    # Errors: one line on stderr naming the file, exit status 2, no traceback.
    assert conv.main([stream, elf]) == 2
    err = capsys.readouterr().err
    assert err.startswith('qevm2elf: ') and 'already exists' in err and 'Traceback' not in err
    assert conv.main([str(tmp_path / 'missing.qevm'), str(tmp_path / 'x.elf')]) == 2
    assert 'cannot read the stream' in capsys.readouterr().err
    with open(elf, 'r+b') as handle:
        handle.seek(loads(elf)[0][2] + 0x7000)
        handle.write(b'tampered')
    assert conv.main([stream, elf, '--check-only']) == 1
    assert 'check FAILED' in capsys.readouterr().err


def test_layout_rules_match_qemu(tmp_path):
    assert qs.split_below_4g('i440fx', 4608 * MIB) == 3 * GIB
    assert qs.split_below_4g('i440fx', 3584 * MIB) == 3 * GIB
    assert qs.split_below_4g('i440fx', 3583 * MIB) == 3583 * MIB
    assert qs.split_below_4g('q35', 2816 * MIB) == 2 * GIB
    assert qs.split_below_4g('q35', 2815 * MIB) == 2815 * MIB
    assert qs.split_below_4g('i440fx', 8 * GIB, max_below=2 * GIB) == 2 * GIB


def test_runs_of_records_land_like_single_records(tmp_path):
    """Runs of consecutive zero or data records go through the converter and the check in one piece each:
    across the split below the PCI hole, over pages that held data, and where an offset is skipped, the
    ELF holds the last version of every page, and a changed page inside a run is caught by the check."""
    below = 3 * GIB     # a 4.5 GiB pc guest: RAM from 3 GiB on lies above 4 GiB
    writer = StreamWriter(blocks=[('pc.ram', 4608 * MIB), ('pc.bios', 256 << 10)])
    final = {}

    def page(offset, tag):
        writer.page('pc.ram', offset, page_of(tag))
        final[offset] = page_of(tag)

    def zero(offset):
        writer.zero('pc.ram', offset)
        final[offset] = bytes(PAGE)

    for index in range(-16, 16):
        page(below + index * PAGE, 'split %d' % index)
    for index in range(16, 316):
        zero(below + index * PAGE)
    for index in range(100):
        page(MIB + index * PAGE, 'low %d' % index)
    for index in range(6):
        page(2 * MIB + index * PAGE, 'skip %d' % index)
    writer.next_part()
    for index in range(10, 60):
        zero(MIB + index * PAGE)
    for index in range(-4, 4):
        page(below + index * PAGE, 'split again %d' % index)
    writer.next_part()
    for index in (0, 1, 3, 4):      # looks like a run, but page 2 is skipped (and page 5 keeps its data)
        zero(2 * MIB + index * PAGE)
    stream = write(tmp_path, writer)
    elf = str(tmp_path / 'vm.elf')

    report = conv.convert(stream, elf)

    for offset, content in sorted(final.items()):
        phys = offset if offset < below else offset + GIB
        assert read_phys(elf, phys) == content, 'guest-physical 0x%x' % phys
    assert report['check']['ok'] is True
    assert report['check']['pages_checked'] == report['pages']['distinct'] == len(final)
    assert report['pages']['records'] == 32 + 300 + 100 + 6 + 50 + 8 + 4
    assert report['pages']['zero_records'] == 300 + 50 + 4
    assert report['pages']['superseded_versions'] == 50 + 8 + 4

    with open(elf, 'r+b') as handle:
        for phys, tag in ((MIB + 80 * PAGE, b'changed inside a data run'), (MIB + 30 * PAGE, b'data where a zero run was'),
                          (4 * GIB + 100 * PAGE, b'in a hole')):
            offset = [o + phys - p for p, n, o in loads(elf) if p <= phys < p + n][0]
            handle.seek(offset)
            handle.write(tag)
    check = conv.check(stream, elf)
    assert check['ok'] is False
    assert check['pages_mismatched'] == 3
    assert set(check['first_mismatched']) == {'0x%x' % (MIB + 80 * PAGE), '0x%x' % (MIB + 30 * PAGE), '0x%x' % (4 * GIB + 100 * PAGE)}
