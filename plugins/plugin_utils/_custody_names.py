# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Names in the evidence directory: checks, the reversible file-name encoding of VM names, and the
rules the service publishes (label pattern, format -> file extension).

For internal collection use only: this is not a public API and may change without notice.
"""

from __future__ import annotations

import hashlib
import os
import re
from urllib.parse import quote, unquote

DUMP_ID_RE = re.compile(r'^[0-9a-f]{32}$')
SHA256_RE = re.compile(r'^[0-9a-f]{64}$')
# inventory_hostname names a directory: no separators, no leading dot.
HOST_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,252}$')
EXTENSION_RE = re.compile(r'^[a-z0-9]{1,16}$')
# What a service that does not publish its rules in /health documents (docs/api.md); used only then.
DEFAULT_RULES = {
    'vm_name': {'max_length': 255, 'forbidden': '/ and control characters'},
    'label': {'pattern': r'^[A-Za-z0-9._:@+-]{1,128}$'},
    'formats': {'elf': 'elf', 'kdump-zlib': 'kdump', 'kdump-lzo': 'kdump', 'kdump-snappy': 'kdump',
                'win-dmp': 'dmp', 'qemu-migration': 'qevm'},
}
# An encoded name longer than this is shortened (see encode_vm_name); the file name stays under the
# usual 255-byte limit with "_<dump id>.<ext>" appended.
MAX_ENCODED = 200


class CustodyError(Exception):
    """A refusal or failure with a message a responder can act on."""


def check_dump_id(dump_id):
    if not isinstance(dump_id, str) or not DUMP_ID_RE.match(dump_id):
        raise CustodyError('dump id %r is refused: it must be 32 lowercase hex characters' % (dump_id,))
    return dump_id


def check_host(host):
    if not isinstance(host, str) or not HOST_RE.match(host):
        raise CustodyError('host name %r is refused: it names an evidence directory (letters, digits and . _ : @ + -, '
                           'not starting with a dot)' % (host,))
    return host


def check_vm_name(vm):
    """A VM name as the service took it. Which names are VM names is the service's rule, not re-checked
    here: every string is safe in a file name through encode_vm_name()."""
    try:
        if isinstance(vm, str) and vm:
            vm.encode('utf-8')
            return vm
    except UnicodeEncodeError:
        pass
    raise CustodyError('VM name %r is refused: it must be a non-empty string of valid Unicode' % (vm,))


def check_label(label, pattern=None):
    """A label the service's published pattern matches whole (re.fullmatch); it names a directory, so never ``.``/``..``/``/``."""
    regex = re.compile(pattern or DEFAULT_RULES['label']['pattern'])
    if not isinstance(label, str) or not regex.fullmatch(label) or label in ('.', '..') or '/' in label or '\0' in label:
        raise CustodyError('label %r is refused: it must match %s (the service\'s rule)' % (label, regex.pattern))
    return label


def encode_vm_name(vm):
    """A file-name-safe, reversible encoding of a VM name: percent-encoding of every byte of its UTF-8
    outside ``A-Z a-z 0-9 _ -`` and non-leading ``.``. A name whose encoding exceeds ``MAX_ENCODED``
    bytes is shortened to its first bytes, ``~`` and 16 hex digits of its SHA-256 (``~`` never
    appears in a full encoding); the custody log keeps the true name either way."""
    check_vm_name(vm)
    enc = quote(vm, safe='').replace('~', '%7E')
    if enc.startswith('.'):
        enc = '%2E' + enc[1:]
    if len(enc) > MAX_ENCODED:
        head = enc[:MAX_ENCODED - 17]
        head = head[:head.rfind('%')] if '%' in head[-2:] else head  # never cut an escape in half
        enc = '%s~%s' % (head, hashlib.sha256(vm.encode('utf-8')).hexdigest()[:16])
    return enc


def decode_vm_name(enc):
    """The VM name of a full encoding; None for a shortened one (read the custody log instead)."""
    if '~' in enc:
        return None
    return unquote(enc, errors='strict')


def extension_of(fmt, rules):
    """The file extension of a format, from the service's published rules."""
    formats = (rules or {}).get('formats') or DEFAULT_RULES['formats']
    ext = formats.get(fmt)
    if not isinstance(ext, str) or not EXTENSION_RE.match(ext):
        raise CustodyError('format %r has no file extension in the service\'s rules (%s): refused'
                           % (fmt, ', '.join('%s=%s' % kv for kv in sorted(formats.items()))))
    return ext


def evidence_relpath(host, vm, dump_id, fmt, rules=None):
    """``<host>/<encoded vm>_<dump id>.<ext>``, relative to the incident directory, from checked names only."""
    return '%s/%s_%s.%s' % (check_host(host), encode_vm_name(vm), check_dump_id(dump_id), extension_of(fmt, rules))


def incident_dir(evidence_dir, label, pattern=None):
    return os.path.join(os.path.abspath(evidence_dir), check_label(label, pattern))
