# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The pure parts of the custody code: names, canonical JSON, the chain, the manifest, the streaming download."""

from __future__ import annotations

import hashlib
import io
import json
import os

import pytest

from ansible_collections.vmforensics.memdump.plugins.module_utils import _custody as custody
from ansible_collections.vmforensics.memdump.plugins.action.memdump_collect import check_record

DATA = os.urandom(3 * custody.CHUNK + 17)
SHA = hashlib.sha256(DATA).hexdigest()
CTX = {'operator': 'alice', 'awx_job_id': None, 'controller': 'ctl', 'collection_version': '0.1.0'}


@pytest.mark.parametrize('name', ['../../../../tmp/x', '../../IR-0/hv02/web01', '', '.hidden', 'a/b', 'a' * 129, 'web 01', 'wéb'])
def test_unsafe_vm_names_are_refused(name):
    with pytest.raises(custody.CustodyError, match='refused'):
        custody.check_vm_name(name)


def test_paths_are_built_from_checked_names():
    assert custody.evidence_relpath('hv01', 'web01', 'a' * 32, 'kdump-zlib') == 'hv01/web01_%s.kdump' % ('a' * 32)
    for bad in (('..', 'web01', 'a' * 32), ('hv01', 'web01', 'A' * 32), ('hv01', 'web01', '../' + 'a' * 29)):
        with pytest.raises(custody.CustodyError):
            custody.evidence_relpath(bad[0], bad[1], bad[2], 'elf')


def test_record_must_name_the_requested_vm():
    rec = {'dump_id': 'a' * 32, 'vm': 'db01', 'state': 'completed', 'sha256': SHA, 'size_bytes': 1, 'format': 'elf'}
    with pytest.raises(custody.CustodyError, match="names VM 'db01', but VM 'web01' was asked for"):
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
    stats = custody.download(open_file, dest, len(DATA), SHA, sleep=lambda s: None)
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
    with pytest.raises(custody.DownloadError, match=expect):
        custody.download(make, dest, len(DATA), SHA, retries=2, sleep=lambda s: None)
    assert not os.path.exists(dest)


def test_download_wrong_hash_keeps_nothing(tmp_path):
    dest = str(tmp_path / 'img.elf')
    other = hashlib.sha256(b'other').hexdigest()
    with pytest.raises(custody.DownloadError, match='SHA-256 of the received image'):
        custody.download(lambda offset: FakeResponse(DATA, offset, headers={'X-Memdump-SHA256': other}), dest,
                         len(DATA), other, sleep=lambda s: None)
    assert os.listdir(str(tmp_path)) == []


def test_download_never_overwrites(tmp_path):
    dest = tmp_path / 'img.elf'
    dest.write_bytes(b'old')
    with pytest.raises(custody.DownloadError, match='never overwritten'):
        custody.download(lambda offset: FakeResponse(DATA, offset), str(dest), len(DATA), SHA, sleep=lambda s: None)
    assert dest.read_bytes() == b'old'
