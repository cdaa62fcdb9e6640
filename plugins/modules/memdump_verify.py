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
    C(manifest.json) with the manifest the log generates. An empty log fails.
  - Signed events that cannot be checked (no O(allowed_signers)) fail the verification unless
    O(skip_signatures=true); then the result (RV(signatures_checked), RV(checked)) and every appended
    C(reverified) event say that the signatures were not checked. Unsigned events fail unless
    O(allow_unsigned=true).
  - B(Witnesses.) The hash chain detects removed, reordered and edited events before the last one. Events
    cut off the end (with their images) are detected only against a chain head kept elsewhere. The
    service keeps the head each collection reported (ask it with O(collect_url)), and the InfluxDB
    callback records the head of every run (ask it with O(influxdb)). Every head a witness saw must be in
    the log with the same chain hash. RV(checked) lists which witnesses were reached; a witness that was
    not reached is a warning, no witness at all is a warning.
  - Fails naming what is wrong, for example C(image hv01/web01_....elf (VM web01, dump ...) changed),
    C(event at line 4 (seq 5, verified, dump ...) does not chain to the line before it), C(... signed by a key
    that is not in allowed_signers - the event was edited or forged), C(image ... is missing),
    C(hv01/extra.elf is not listed in the custody log), C(the service at ... saw the custody log at event seq 11,
    but the log has only 8 events - its tail was cut).
  - A torn last line (a write cut by a full disk or a crash) fails the verification; O(repair_torn_line=true)
    moves the partial line aside to C(custody.jsonl.torn-<time>) and records that in a C(repaired) event, so
    acquisitions can go on.
  - When everything verifies and O(signing_key) is given, appends one C(reverified) event per image.
author:
  - vmforensics maintainers (@vmforensics)
extends_documentation_fragment:
  - vmforensics.memdump.collect_connection
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
    description: Accept unsigned events (reported in RV(unsigned) and as a warning).
    type: bool
    default: false
  skip_signatures:
    description:
      - Accept signed events without checking their signatures when no O(allowed_signers) is given. The
        result and any appended C(reverified) event say that the signatures were not checked.
    type: bool
    default: false
  repair_torn_line:
    description:
      - Move a torn last line of the log aside (C(custody.jsonl.torn-<time>), kept) and record a C(repaired)
        event, then verify. Without it a torn line fails the verification and blocks further appends.
    type: bool
    default: false
  token:
    description:
      - Bearer token for the witness requests when O(collect_token) is not set. The service is asked only
        when O(collect_url) (or E(MEMDUMP_COLLECT_URL)) is set.
      - If not set, the controller's environment variable E(MEMDUMP_SERVICE_TOKEN) is used.
    type: str
  influxdb:
    description:
      - Ask InfluxDB for the chain heads the callback recorded (measurement C(memdump_custody)). The
        sub-options are those of M(vmforensics.memdump.memdump_records), with the same environment variables
        (E(MEMDUMP_INFLUXDB_URL), ...); V({}) takes them all from the environment. InfluxDB 1.x query API (also
        the v1 compatibility API of InfluxDB 2.x, with O(influxdb.token)).
    type: dict
    suboptions:
      url:
        description: InfluxDB URL.
        type: str
        default: http://127.0.0.1:8086
      api:
        description: Not used for the query (always the 1.x query API).
        type: str
        choices: [auto, v1, v2]
        default: auto
      database:
        description: Database (or the bucket's v1 mapping).
        type: str
        default: memdump
      retention_policy:
        description: Retention policy.
        type: str
      username:
        description: User name (InfluxDB 1.x).
        type: str
      password:
        description: Password (InfluxDB 1.x).
        type: str
      org:
        description: Not used for the query.
        type: str
      bucket:
        description: Used as the database when O(influxdb.database) is empty.
        type: str
      token:
        description: Token for the v1 compatibility API of InfluxDB 2.x.
        type: str
      measurement:
        description: Not used (the custody heads are in C(memdump_custody)).
        type: str
        default: memdump
      request_timeout:
        description: Timeout in seconds of the query.
        type: float
        default: 5
      validate_certs:
        description: Validate InfluxDB's TLS certificate.
        type: bool
        default: true
      ca_path:
        description: CA file for InfluxDB's TLS certificate.
        type: path
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
custody_head:
  description: The chain head as C({label, seq, hash}); the InfluxDB callback records it.
  returned: always
  type: dict
checked:
  description:
    - What was checked - C(chain_events) (lines whose chain was checked), C(signatures_verified) (against
      O(allowed_signers)), C(signatures_not_checked), C(signers), C(images_rehashed), and C(witnesses), one
      dict per witness asked (C(witness) service or influxdb, C(url), C(reached), C(heads) compared, C(note)).
  returned: always
  type: dict
signatures_checked:
  description: Whether the signatures were checked against O(allowed_signers).
  returned: always
  type: bool
images:
  description: The images the log lists, with C(file), C(vm), C(dump_id), C(sha256), C(size_bytes), C(rehashed) and C(ok).
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
pending_deletions:
  description:
    - Deletions whose C(deleting) intent has no recorded outcome (a run stopped in between), each with C(dump_id),
      C(vm), C(host), C(intent_seq) and C(time). A warning names them; re-run the deletion to complete them.
  returned: always
  type: list
  elements: dict
reverified:
  description: The seq of each C(reverified) event appended.
  returned: always
  type: list
  elements: int
repaired:
  description: The seq of the C(repaired) event appended by O(repair_torn_line), else null.
  returned: always
  type: int
'''
