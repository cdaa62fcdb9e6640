"""Live dumps of real Linux guests (TCG), taken by the real service, converted to ELF with the domain XML
the service recorded: known blobs that QEMU's loader put below and above 4 GiB are at their guest-physical
addresses, the ELF's PT_LOADs are those of QEMU's own memory-only ELF of the same guest, the page check
passes, and Volatility 3 finds the kernel banner, also in a guest that keeps writing while it is captured.

The guests (memdump-convert-*: a 4608 MiB pc, a 3 GiB two-cell q35, a 1 GiB pc that rewrites 64 MiB)
come from ``tests/stack/stack.sh convert-up``; the module starts them if the stack has not.
"""
import os
import shlex
import struct
import subprocess
import sys

import pytest

from conftest import REPO, sha256_file, stack_env

sys.path.insert(0, os.path.join(REPO, 'tests', 'output', 'collections'))

pytestmark = pytest.mark.skipif(not os.environ.get('MEMDUMP_TEST_LINUX_VM'),
                                reason='MEMDUMP_TEST_LINUX_VM unset (run tests/stack/stack.sh up): no real hypervisor')

GIB = 1 << 30


def _converter():
    # The collection as ansible-playbook sees it (tests/run.sh links this checkout there).
    from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _qevm2elf  # pylint: disable=import-outside-toplevel
    return _qevm2elf


@pytest.fixture(scope='module')
def convert_guests():
    """The exports of convert-env ({name: value}), bringing the guests up the first time."""
    env_file = os.path.join(stack_env('MEMDUMP_STACK_DIR'), 'convert-env')
    if not os.path.exists(env_file):
        proc = subprocess.run(['bash', os.path.join(REPO, 'tests', 'stack', 'stack.sh'), 'convert-up'],
                              capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, 'stack.sh convert-up failed:\n' + proc.stderr[-3000:]
    values = {}
    with open(env_file) as handle:
        for line in handle:
            if line.startswith('export '):
                key, _sep, value = line[len('export '):].strip().partition('=')
                values[key] = shlex.split(value)[0] if value else ''
    return values


def blobs(guests, short):
    """[(bytes, guest-physical address)] that the loader put into the guest."""
    out = []
    for item in guests['MEMDUMP_CONVERT_BLOBS_' + short].split():
        path, addr = item.rsplit(':', 1)
        with open(path, 'rb') as handle:
            out.append((handle.read(), int(addr, 16)))
    return out


def pt_loads(path):
    """(phys, length, offset) of each PT_LOAD: read with struct, not with the converter's code."""
    with open(path, 'rb') as handle:
        head = handle.read(64)
        phoff, = struct.unpack_from('<Q', head, 32)
        phnum, = struct.unpack_from('<H', head, 56)
        handle.seek(phoff)
        table = handle.read(56 * phnum)
    loads = []
    for i in range(phnum):
        p_type, _f, offset, _v, paddr, filesz, _m, _a = struct.unpack_from('<IIQQQQQQ', table, i * 56)
        if p_type == 1:
            loads.append((paddr, filesz, offset))
    return sorted(loads)


def read_phys(path, phys, length):
    for start, size, offset in pt_loads(path):
        if start <= phys and phys + length <= start + size:
            with open(path, 'rb') as handle:
                handle.seek(offset + phys - start)
                return handle.read(length)
    raise AssertionError('guest-physical 0x%x is in no PT_LOAD of %s' % (phys, path))


def assert_blob(path, data, addr):
    """The blob is at its guest-physical address (a short message, not a diff of a MiB)."""
    got = read_phys(path, addr, len(data))
    if got != data:
        differing = sum(1 for i in range(0, len(data), 4096) if got[i:i + 4096] != data[i:i + 4096])
        pytest.fail('%s: the blob placed at guest-physical 0x%x is not there (%d of %d pages differ; found %r...)'
                    % (os.path.basename(path), addr, differing, len(data) // 4096, got[:32]))


def dump(svc, wait_until, vm, **body):
    status, answer = svc.api('POST', '/api/dumps', dict({'vms': [vm]}, **body))
    assert status == 202, answer
    dump_id = answer['dumps'][0]['dump_id']
    wait_until(lambda: svc.api('GET', '/api/dumps/' + dump_id)[1]['state'] in ('completed', 'failed'), 300, interval=0.2,
               what='the dump of %s' % vm)
    record = svc.api('GET', '/api/dumps/' + dump_id)[1]
    assert record['state'] == 'completed', record
    return record


def convert_live(svc, wait_until, vm, tmp_path, hash_elf=False):
    record = dump(svc, wait_until, vm, method='live')
    stream = record['dump_path']
    with open(stream, 'rb') as handle:
        assert handle.read(4) == b'QEVM'
    elf = str(tmp_path / (vm + '.elf'))
    report = _converter().convert(stream, elf, domain_xml=record['domain_xml'])
    assert report['check']['ok'] is True, report['check']
    assert report['check']['pages_mismatched'] == 0 and report['check']['pages_missing_from_elf'] == 0
    assert report['stream']['sha256'] == sha256_file(stream)
    if hash_elf:    # reading GiBs again costs minutes on a loaded machine: once, for the smallest guest
        assert report['elf']['sha256'] == sha256_file(elf)
    return record, report, elf


def banner(image):
    """The kernel banner line Volatility 3's banners.Banners finds, or ''."""
    vol = os.path.join(os.path.dirname(sys.executable), 'vol')
    proc = subprocess.run([vol, '-q', '-r', 'csv', '-f', image, 'banners.Banners'], capture_output=True, text=True, timeout=900, check=False)
    lines = [line for line in proc.stdout.splitlines() if 'Linux version' in line]
    return lines[0] if lines else ''


def test_pc_guest_above_4_gib_blobs_at_their_addresses(convert_guests, memdump_service, wait_until, tmp_path):
    svc = memdump_service()
    record, report, elf = convert_live(svc, wait_until, convert_guests['MEMDUMP_CONVERT_VM_PC'], tmp_path)
    assert record['machine'].startswith('pc-i440fx-') or record['machine'] == 'pc'
    # pc with 4.5 GiB: 3 GiB below the PCI hole, the BIOS under 4 GiB, 1.5 GiB from 4 GiB up.
    assert [(p, n) for p, n, _o in pt_loads(elf)] == [(0, 3 * GIB), (4 * GIB - (256 << 10), 256 << 10), (4 * GIB, 1536 << 20)]
    for data, addr in blobs(convert_guests, 'pc'):
        assert_blob(elf, data, addr)
    assert report['stream']['size'] < os.path.getsize(elf) / 10     # zero pages: holes, not bytes, in the stream


def test_q35_guest_with_two_numa_cells_matches_qemus_own_elf(convert_guests, memdump_service, wait_until, tmp_path):
    svc = memdump_service()
    vm = convert_guests['MEMDUMP_CONVERT_VM_Q35']
    record, report, elf = convert_live(svc, wait_until, vm, tmp_path)
    assert [b['name'] for b in report['blocks'] if 'placed' in b][:2] == ['ram-node0', 'ram-node1']
    for data, addr in blobs(convert_guests, 'q35'):
        assert_blob(elf, data, addr)
    # QEMU's own memory-only ELF of the same guest: the same guest-physical ranges, the same blobs.
    qemu_elf = dump(svc, wait_until, vm, format='elf')['dump_path']
    try:
        assert [(p, n) for p, n, _o in pt_loads(elf)] == [(p, n) for p, n, _o in pt_loads(qemu_elf)]
        for data, addr in blobs(convert_guests, 'q35'):
            assert_blob(qemu_elf, data, addr)
    finally:
        os.unlink(qemu_elf)
    assert 'Linux version' in banner(elf)


def test_guest_that_keeps_writing_converts_and_volatility_finds_its_banner(convert_guests, memdump_service, wait_until, tmp_path):
    svc = memdump_service()
    _record, report, elf = convert_live(svc, wait_until, convert_guests['MEMDUMP_CONVERT_VM_BUSY'], tmp_path, hash_elf=True)
    # Its stream carries pages several times; the ELF holds the last version of each (the check above).
    assert report['pages']['records'] >= report['pages']['distinct']
    assert 'Linux version' in banner(elf)
