# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The custody code in plugin_utils: names and their encoding, canonical JSON, the chain, the manifest,
appends that fail half-way, a torn line and its repair, the streaming download and its final name."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import resource
import signal

import pytest

from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _custody_download as download_
from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _custody_log as custody
from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _custody_names as names
from ansible_collections.vmforensics.memdump.plugins.action.memdump_collect import check_record

DATA = os.urandom(3 * custody.CHUNK + 17)
SHA = hashlib.sha256(DATA).hexdigest()
CTX = {'operator': 'alice', 'awx_job_id': None, 'controller': 'ctl', 'collection_version': '0.1.0'}


NAMES = ['web01', 'Web Server #2', '../../../../tmp/x', '.hidden', '..', 'a/b', 'wéb~01', '%41', '日本語のVM',
         'x' * 255, 'é' * 255, 'tab\there', 'a_0123456789abcdef0123456789abcdef.elf']


@pytest.mark.parametrize('name', NAMES)
def test_every_name_becomes_one_safe_file_name(name):
    enc = names.encode_vm_name(name)
    assert '/' not in enc and enc not in ('.', '..') and not enc.startswith('.') and len(enc.encode()) <= 200
    assert all(c.isascii() and (c.isalnum() or c in '._-%~') for c in enc)
    if len(name.encode()) <= 60:
        assert names.decode_vm_name(enc) == name  # reversible
    rel = names.evidence_relpath('hv01', name, 'a' * 32, 'elf')
    assert rel.count('/') == 1 and rel.startswith('hv01/') and len(rel.split('/')[1].encode()) < 255


def test_long_names_stay_distinct_and_say_they_are_shortened():
    a, b = names.encode_vm_name('x' * 254 + 'a'), names.encode_vm_name('x' * 254 + 'b')
    assert a != b and '~' in a and names.decode_vm_name(a) is None


def test_paths_are_built_from_checked_names():
    assert names.evidence_relpath('hv01', 'web01', 'a' * 32, 'kdump-zlib') == 'hv01/web01_%s.kdump' % ('a' * 32)
    for bad in (('..', 'web01', 'a' * 32), ('hv01', 'web01', 'A' * 32), ('hv01', 'web01', '../' + 'a' * 29),
                ('hv01', '', 'a' * 32)):
        with pytest.raises(names.CustodyError):
            names.evidence_relpath(bad[0], bad[1], bad[2], 'elf')


def test_extensions_come_from_the_published_rules():
    rules = {'formats': {'elf': 'core', 'live': 'qevm', 'evil': '../x'}}
    assert names.extension_of('elf', rules) == 'core' and names.extension_of('live', rules) == 'qevm'
    with pytest.raises(names.CustodyError, match="format 'evil' has no file extension"):
        names.extension_of('evil', rules)
    with pytest.raises(names.CustodyError, match="format 'kdump-zlib'"):
        names.extension_of('kdump-zlib', rules)  # not published by this service: refused, not guessed
    assert names.extension_of('kdump-zlib', None) == 'kdump'  # an older service: its documented defaults


def test_label_follows_the_published_pattern_but_never_names_a_parent():
    assert names.check_label('IR 42', '^[A-Za-z0-9 ]+$') == 'IR 42'
    for bad in ('..', '.', 'a/b'):
        with pytest.raises(names.CustodyError):
            names.check_label(bad, '^.+$')
    # "$" also matches before a trailing newline: the whole label must match, as the service checks it.
    with pytest.raises(names.CustodyError, match='is refused'):
        names.check_label('IR-42\n')


def test_record_must_name_the_requested_vm():
    rec = {'dump_id': 'a' * 32, 'vm': 'db01', 'state': 'completed', 'sha256': SHA, 'size_bytes': 1, 'format': 'elf'}
    with pytest.raises(names.CustodyError, match="names VM 'db01', but VM 'web01' was asked for"):
        check_record(rec, 'web01', 'a' * 32)
    check_record(dict(rec, vm='web01'), 'web01', 'a' * 32)


def test_chain_canonical_lines_and_manifest(tmp_path):
    inc = str(tmp_path / 'IR-1')
    rec = {'vm': 'web01', 'sha256': SHA, 'size_bytes': len(DATA), 'paused_sec': 1.357, 'host': 'kvm01',
           'machine': 'pc-q35', 'format': 'elf'}
    with custody.CustodyLog(inc) as log:
        log.append(custody.acquired_event('IR-1', 'hv01', 'web01', 'a' * 32, rec, CTX))
        log.append(dict(custody.base_event('verified', 'IR-1', 'hv01', 'web01', 'a' * 32, rec, CTX),
                        evidence_file='hv01/x.elf'))
        assert log.write_manifest() is True
        assert log.write_manifest() is False
    lines = open(os.path.join(inc, 'custody.jsonl'), 'rb').read().split(b'\n')[:-1]
    first, second = [json.loads(x) for x in lines]
    assert first['prev'] == custody.GENESIS and second['prev'] == hashlib.sha256(lines[0]).hexdigest()
    assert custody.canonical(first) == lines[0] and first['signature'] is None
    assert first['method'] == 'memory-only' and first['context'] == {'machine': 'pc-q35'}
    assert custody.payload_of(first) == custody.canonical(dict((k, v) for k, v in first.items() if k != 'signature'))
    manifest = json.load(open(os.path.join(inc, 'manifest.json')))
    entry = manifest['entries'][0]
    assert entry['collected'] and entry['evidence_file'] == 'hv01/x.elf' and entry['sha256'] == SHA
    assert oct(os.stat(inc).st_mode & 0o777) == '0o700'


class FakeResponse(object):
    """One HTTP answer: status, headers, a body that may be cut after ``cut`` bytes."""

    def __init__(self, data, offset, status=None, cut=None, headers=None):
        self.status = status or (206 if offset else 200)
        body = data[offset:]
        self.fp = io.BytesIO(body[:cut] if cut is not None else body)
        self.cut = cut is not None
        self.headers = {'X-Memdump-SHA256': SHA, 'Content-Length': str(len(body))}
        if offset:
            self.headers['Content-Range'] = 'bytes %d-%d/%d' % (offset, len(data) - 1, len(data))
        self.headers.update(headers or {})

    def getcode(self):
        return self.status

    def readinto(self, buf):
        n = self.fp.readinto(buf)
        if not n and self.cut:
            raise ConnectionResetError('cut')
        return n

    def close(self):
        pass


def test_download_resumes_after_cuts_and_renames_0400(tmp_path):
    offsets = []

    def open_file(offset):
        offsets.append(offset)
        return FakeResponse(DATA, offset, cut=custody.CHUNK + 5 if len(offsets) < 3 else None)
    dest = str(tmp_path / 'img.elf')
    stats = download_.download(open_file, dest, len(DATA), SHA, sleep=lambda s: None)
    assert stats['resumes'] == 2 and stats['sha256'] == SHA
    assert offsets == [0, custody.CHUNK + 5, 2 * (custody.CHUNK + 5)]
    assert open(dest, 'rb').read() == DATA and not os.path.exists(dest + '.part')
    assert oct(os.stat(dest).st_mode & 0o777) == '0o400'


@pytest.mark.parametrize('make, expect', [
    (lambda offset: FakeResponse(DATA + b'x', offset, headers={'Content-Length': None, 'X-Memdump-SHA256': SHA}),
     'sent more than'),
    (lambda offset: FakeResponse(DATA, offset, headers={'Content-Length': str(len(DATA) + 1)}), 'Content-Length'),
    (lambda offset: FakeResponse(DATA, offset, headers={'X-Memdump-SHA256': '1' * 64}), 'X-Memdump-SHA256'),
    (lambda offset: FakeResponse(DATA, offset, cut=0 if offset else 10, headers={'Content-Length': None}),
     'resumes did not finish'),
])
def test_download_refuses_broken_answers(tmp_path, make, expect):
    dest = str(tmp_path / 'img.elf')
    with pytest.raises(download_.DownloadError, match=expect):
        download_.download(make, dest, len(DATA), SHA, retries=2, sleep=lambda s: None)
    assert not os.path.exists(dest)


def test_download_wrong_hash_keeps_nothing(tmp_path):
    dest = str(tmp_path / 'img.elf')
    other = hashlib.sha256(b'other').hexdigest()
    with pytest.raises(download_.DownloadError, match='SHA-256 of the received image'):
        download_.download(lambda offset: FakeResponse(DATA, offset, headers={'X-Memdump-SHA256': other}), dest,
                           len(DATA), other, sleep=lambda s: None)
    assert os.listdir(str(tmp_path)) == []


def test_download_never_overwrites(tmp_path):
    dest = tmp_path / 'img.elf'
    dest.write_bytes(b'old')
    with pytest.raises(download_.DownloadError, match='never overwritten'):
        download_.download(lambda offset: FakeResponse(DATA, offset), str(dest), len(DATA), SHA, sleep=lambda s: None)
    assert dest.read_bytes() == b'old'


def test_a_leftover_read_only_part_is_resumed_not_in_the_way(tmp_path):
    dest = str(tmp_path / 'img.elf')
    with open(dest + '.part', 'wb') as f:
        f.write(DATA[:1000])
    os.chmod(dest + '.part', 0o400)  # what a run that failed after the hash check left before the fix
    stats = download_.download(lambda offset: FakeResponse(DATA, offset), dest, len(DATA), SHA, sleep=lambda s: None)
    assert stats['bytes_received'] == len(DATA) - 1000
    assert open(dest, 'rb').read() == DATA and not os.path.exists(dest + '.part')


def test_a_file_system_without_hard_links_gets_the_file_by_rename(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, 'Operation not permitted')  # what vfat, SMB and some FUSE mounts answer
    monkeypatch.setattr(download_.os, 'link', no_links)
    dest = str(tmp_path / 'img.elf')
    download_.download(lambda offset: FakeResponse(DATA, offset), dest, len(DATA), SHA, sleep=lambda s: None)
    assert open(dest, 'rb').read() == DATA and not os.path.exists(dest + '.part')
    assert oct(os.stat(dest).st_mode & 0o777) == '0o400'


def test_a_failing_final_name_leaves_a_part_the_next_run_finishes(tmp_path, monkeypatch):
    real_link = os.link

    def broken(src, dst):
        raise OSError(errno.EIO, 'Input/output error')
    monkeypatch.setattr(download_.os, 'link', broken)
    dest = str(tmp_path / 'img.elf')
    with pytest.raises(download_.DownloadError, match=r'writing the image .*img.elf on the controller failed: '
                                                      r'Input/output error .*re-run'):
        download_.download(lambda offset: FakeResponse(DATA, offset), dest, len(DATA), SHA, sleep=lambda s: None)
    assert oct(os.stat(dest + '.part').st_mode & 0o777) == '0o600'
    monkeypatch.setattr(download_.os, 'link', real_link)
    stats = download_.download(lambda offset: FakeResponse(DATA, offset), dest, len(DATA), SHA, sleep=lambda s: None)
    assert stats['bytes_received'] == 0 and open(dest, 'rb').read() == DATA


@pytest.fixture
def file_size_limit():
    """Sets RLIMIT_FSIZE so that the kernel cuts writes (a full disk as a write sees it), then restores it."""
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG

    def limit(size):
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, old[1]))
    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, old)
    signal.signal(signal.SIGXFSZ, handler)


def test_a_write_cut_short_is_undone_and_reported(tmp_path, file_size_limit):
    inc = str(tmp_path / 'IR-1')
    rec = {'sha256': SHA, 'size_bytes': 1}
    with custody.CustodyLog(inc) as log:
        log.append(custody.acquired_event('IR-1', 'hv01', 'web01', 'a' * 32, rec, CTX))
        before = open(log.path, 'rb').read()
        file_size_limit(len(before) + 40)  # room for 40 bytes of a line of several hundred
        with pytest.raises(names.CustodyError, match=r'writing a custody event to .*custody.jsonl failed: .*File too '
                                                     r'large.*the partial line was removed'):
            log.append(custody.acquired_event('IR-1', 'hv01', 'db01', 'b' * 32, rec, CTX))
    assert open(os.path.join(inc, 'custody.jsonl'), 'rb').read() == before


def test_a_torn_line_blocks_appends_until_the_recorded_repair(tmp_path):
    inc = str(tmp_path / 'IR-1')
    rec = {'sha256': SHA, 'size_bytes': 1}
    with custody.CustodyLog(inc) as log:
        log.append(custody.acquired_event('IR-1', 'hv01', 'web01', 'a' * 32, rec, CTX))
    with open(os.path.join(inc, 'custody.jsonl'), 'ab') as f:
        f.write(b'{"event":"acq')  # a write cut by a crash
    with custody.CustodyLog(inc) as log:
        with pytest.raises(custody.TornLineError, match='repair_torn_line: true'):
            log.append(custody.acquired_event('IR-1', 'hv01', 'db01', 'b' * 32, rec, CTX))
        event = log.repair_torn_line(lambda info: dict(custody.base_event('repaired', 'IR-1', None, None, None, None,
                                                                          CTX), **info))
        assert event['seq'] == 1 and event['torn_bytes'] == 13
        assert open(os.path.join(inc, event['torn_file']), 'rb').read() == b'{"event":"acq'
        assert log.repair_torn_line(lambda info: info) is None  # nothing torn any more
        log.append(custody.acquired_event('IR-1', 'hv01', 'db01', 'b' * 32, rec, CTX))
    assert [e['event'] for e in custody.CustodyLog(inc).events()] == ['acquired', 'repaired', 'acquired']


def test_sha256_of_a_sparse_file_is_the_hash_of_all_its_bytes(tmp_path):
    """A derived ELF is mostly holes: its hash is read from its data and zeros, and is the plain file's hash."""
    path = tmp_path / 'sparse.elf'
    with open(path, 'wb') as handle:
        handle.truncate(64 << 20)
        for offset, data in ((0, b'\x7fELF header'), (5 << 20, b'A' * 10000), ((32 << 20) - 3, b'across a boundary'),
                             ((64 << 20) - 1, b'!')):
            handle.seek(offset)
            handle.write(data)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert custody.sha256_file(str(path)) == (64 << 20, expected)
    with open(path, 'rb') as handle:
        handle.seek(12345)      # read with pread: where the descriptor stands does not matter
        assert custody.sha256_fd(handle.fileno()) == (64 << 20, expected)
    empty = tmp_path / 'empty'
    empty.write_bytes(b'')
    assert custody.sha256_file(str(empty)) == (0, hashlib.sha256(b'').hexdigest())
