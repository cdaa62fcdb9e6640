#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# The work is done by the action plugin of the same name (plugins/action/memdump_convert.py), on the
# controller; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r'''
module: memdump_convert
short_description: Derive an ELF core from a collected live dump and record it in the custody log
version_added: 0.1.0
description:
  - Runs on the controller (an action plugin), in C(<evidence_dir>/<label>/) as written by
    M(vmforensics.memdump.memdump_collect).
  - A live dump (O(vmforensics.memdump.memdump_trigger#module:method=live)) is QEMU's migration stream
    (C(.qevm)), which few analysis tools read and Volatility 3 reads slowly. This module converts the
    collected, verified stream into a standard ELF64 core laid out as QEMU's own memory-only dump (one
    C(PT_LOAD) per guest-physical RAM range, the PCI hole and the RAM above 4 GiB where the machine put
    them, taken from the stream's RAM blocks and machine type and the domain XML recorded with the dump),
    written next to it as C(<stream file>.elf), read-only, sparse.
  - The converter checks its output page by page against the stream (every page of the ELF equals the
    stream's final version of that page, every page the stream carries is in the ELF) before anything is
    recorded. The stream's SHA-256 must equal the one the custody log verified.
  - Records a C(derived) custody event with both SHA-256s, the converter's name and version and the
    check's counts. The stream stays the primary evidence; M(vmforensics.memdump.memdump_verify)
    re-hashes derived files too.
  - A dump that is not a live stream is left alone (not changed). A dump already converted is not
    converted again (its derived file must still hash to the recorded SHA-256).
  - The same conversion without Ansible, for an analyst with only the image -
    C(python3 -m ansible_collections.vmforensics.memdump.plugins.plugin_utils._qevm2elf STREAM OUT.elf
    [--domain-xml F]) with the collection on C(PYTHONPATH) (docs/runbook.md, "Analysis").
author:
  - vmforensics maintainers (@vmforensics)
extends_documentation_fragment:
  - vmforensics.memdump.attributes
  - ansible.builtin.action_common_attributes.flow
attributes:
  check_mode:
    support: full
    details:
      - Says whether a conversion would be made; converts nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
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
  dump_id:
    description: The dump whose collected live stream is converted.
    type: str
    required: true
  signing_key:
    description: OpenSSH private key that signs the C(derived) event (as in M(vmforensics.memdump.memdump_collect)).
    type: path
  operator:
    description: Who converts, for the event; defaults to the AWX user, else the controller's user.
    type: str
  collection_version:
    description: Recorded in the event; defaults to this collection's version.
    type: str
seealso:
  - module: vmforensics.memdump.memdump_collect
  - module: vmforensics.memdump.memdump_verify
'''

EXAMPLES = r'''
- name: Derive an ELF core from the live dump collected for IR-2026-042
  vmforensics.memdump.memdump_convert:
    evidence_dir: /srv/evidence
    label: IR-2026-042
    dump_id: "{{ collected.dump_id }}"
    signing_key: ~/.ssh/custody
'''

RETURN = r'''
converted:
  description: Whether this run made the derived file.
  returned: always
  type: bool
source_file:
  description: The stream, relative to the incident directory.
  returned: always
  type: str
  sample: hv01/web01_0f3c5b7e9a1d4c2b8e6f0a1b2c3d4e5f.qevm
derived_file:
  description: The derived ELF, relative to the incident directory; null when the dump is not a live stream.
  returned: always
  type: str
  sample: hv01/web01_0f3c5b7e9a1d4c2b8e6f0a1b2c3d4e5f.qevm.elf
report:
  description:
    - The converter's report when it ran - C(stream) and C(elf) (path, size, SHA-256), C(machine),
      C(segments) (guest-physical ranges), C(pages) (records, superseded versions, zero pages) and C(check).
  returned: when converted
  type: dict
custody_head:
  description: The chain head as C({label, seq, hash}); the InfluxDB callback records it.
  returned: when a custody log exists
  type: dict
'''
