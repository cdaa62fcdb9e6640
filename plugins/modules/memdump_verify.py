#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# The work is done by the action plugin of the same name (plugins/action/memdump_verify.py), on the
# controller; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r'''
module: memdump_verify
short_description: Verify an incident's memory images against its signed custody log
version_added: 0.1.0
description:
  - Runs on the controller (an action plugin), on C(<evidence_dir>/<label>/) as written by
    M(vmforensics.memdump.memdump_collect).
  - Checks every line of C(custody.jsonl) (canonical JSON, C(seq), the hash chain C(prev)), every
    signature with C(ssh-keygen -Y verify) against O(allowed_signers) (namespace C(memdump-custody)),
    re-hashes every image the log lists, looks for files the log does not list, and compares
    C(manifest.json) with the manifest the log generates.
  - Fails naming what is wrong, for example C(image hv01/web01_....elf (VM web01, dump ...) changed),
    C(event at line 4 (seq 5, verified, dump ...) does not chain to the line before it), C(... signed by a key
    that is not in allowed_signers - the event was edited or forged), C(image ... is missing),
    C(hv01/extra.elf is not listed in the custody log).
  - When everything verifies and O(signing_key) is given, appends one C(reverified) event per image.
  - The log's hash chain detects removed, reordered and edited events before the last one; the removal
    of the last events can only be seen against a chain head kept elsewhere, so record RV(head) (for
    example in the incident ticket).
author:
  - vmforensics maintainers (@vmforensics)
extends_documentation_fragment:
  - vmforensics.memdump.attributes
  - ansible.builtin.action_common_attributes.flow
attributes:
  check_mode:
    support: full
    details:
      - Verifies; appends no C(reverified) event.
  diff_mode:
    support: none
  idempotent:
    support: partial
    details:
      - With O(signing_key), every passing run appends C(reverified) events.
  action:
    support: full
  async:
    support: none
  bypass_host_loop:
    support: none
options:
  evidence_dir:
    description: The evidence directory; the incident is C(<evidence_dir>/<label>).
    type: path
    required: true
  label:
    description: The incident label.
    type: str
    required: true
  allowed_signers:
    description:
      - OpenSSH allowed-signers file (C(ssh-keygen(1)) ALLOWED SIGNERS) with the public keys whose
        signatures are accepted, one line per key such as C(custody@ir.example.com namespaces="memdump-custody" ssh-ed25519 AAAA...).
      - Required unless O(allow_unsigned=true).
    type: path
  allow_unsigned:
    description:
      - Accept unsigned events (reported in RV(unsigned) and as a warning) and, without O(allowed_signers),
        do not check signatures.
    type: bool
    default: false
  signing_key:
    description: OpenSSH private key that signs the C(reverified) events; without it none is appended.
    type: path
  operator:
    description: Who verifies, for the C(reverified) events; defaults to the AWX user, else the controller's user.
    type: str
  collection_version:
    description: Recorded in the C(reverified) events; defaults to this collection's version.
    type: str
seealso:
  - module: vmforensics.memdump.memdump_collect
'''

EXAMPLES = r'''
- name: Verify the evidence of an incident
  vmforensics.memdump.memdump_verify:
    evidence_dir: /srv/evidence
    label: IR-2026-042
    allowed_signers: /etc/memdump/allowed_signers
'''

RETURN = r'''
incident_dir:
  description: The incident's directory.
  returned: always
  type: str
events:
  description: Number of events in the log (after the appended C(reverified) ones).
  returned: always
  type: int
head:
  description: Hex SHA-256 of the log's last line (the chain head).
  returned: always
  type: str
images:
  description: The images the log lists, with C(file), C(vm), C(dump_id), C(sha256), C(size_bytes) and C(ok).
  returned: always
  type: list
  elements: dict
unsigned:
  description: Positions (seq) of unsigned events.
  returned: always
  type: list
  elements: int
signers:
  description: The allowed-signers principals whose signatures were found.
  returned: always
  type: list
  elements: str
problems:
  description: What is wrong; empty when the evidence verifies.
  returned: always
  type: list
  elements: str
reverified:
  description: The seq of each C(reverified) event appended.
  returned: always
  type: list
  elements: int
'''
