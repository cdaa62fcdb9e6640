#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# The work is done by the action plugin of the same name (plugins/action/memdump_collect.py), on the
# controller; this file holds its documentation.

from __future__ import annotations

DOCUMENTATION = r'''
module: memdump_collect
short_description: Record a memory dump in the incident's custody log and collect its image to the controller
version_added: 0.1.0
description:
  - Runs on the controller (an action plugin). For one completed dump, appends the custody events of
    the acquisition to C(<evidence_dir>/<label>/custody.jsonl) and, with O(download=true), downloads the
    image from the service to C(<evidence_dir>/<label>/<host>/<vm>_<dump id>.<ext>).
  - The image is downloaded from O(collect_url), the service as the controller reaches it. The host-side
    options (O(url), O(token), ...) are accepted so that C(module_defaults) for the action group works;
    O(url) is used for the download only when the task's host is the controller itself, and O(token)
    when O(collect_token) is not set.
  - The file name is built from the B(requested) VM name O(vm) in a reversible, file-name-safe encoding
    (percent-encoding of every byte outside C(A-Z a-z 0-9 _ -) and of a leading C(.), so C(Web Server 2)
    becomes C(Web%20Server%202); a name whose encoding is longer than 200 bytes is shortened to its start,
    C(~) and a hash) and the dump id; the custody log keeps the true name. Every VM name the service accepts
    can be collected. The file extension of each format and the label rule come from what the service
    publishes in C(/health) (C(rules)); for an older service that does not, its documented defaults are
    used and the task warns. The service's record must name the same VM and dump id and be C(completed),
    else the task fails and nothing is written.
  - The download streams in 1 MiB chunks (memory stays flat) through C(<file>.part) in the same
    directory, hashing while it receives; a cut connection is resumed with C(Range) up to O(retries)
    times. The file gets its final name (mode C(0400), directories C(0700)) only when its size and
    SHA-256 equal the service's record and its C(X-Memdump-SHA256) header; a body longer or shorter
    than announced fails. Redirects are refused, so the token never goes to another host.
  - An existing evidence file is never overwritten; one with the same size and SHA-256 is verified
    and reused (no download). A failure at any point (also of the evidence file system, for example one
    without hard links, or a full disk) fails the task with the file and what to do; what it leaves
    (a C(.part)) is resumed by the next run, never in its way.
  - After the download the service is told that the image was collected, together with the custody log's
    chain head C({label, seq, hash}), which the service keeps as a witness (C(custody_heads) in the dump's
    record) so that M(vmforensics.memdump.memdump_verify) can detect a log whose tail was cut. A service
    that does not list the feature is not sent the head (a warning says so).
  - Events (one JSON line each, hash-chained, signed with O(signing_key) in OpenSSH's SSHSIG format,
    namespace C(memdump-custody)) are C(acquired), C(collected) and C(verified) (the file re-hashed
    from disk under its final name). Each is appended once per dump, so a re-run appends nothing and
    reports no change. C(manifest.json) is regenerated from the log (atomic write). Concurrent runs
    on one label serialize on C(flock) of C(<label>/.custody.lock).
  - The format of the log and how to check it with C(ssh-keygen) are in C(docs/runbook.md).
author:
  - vmforensics maintainers (@vmforensics)
extends_documentation_fragment:
  - vmforensics.memdump.connection
  - vmforensics.memdump.collect_connection
  - vmforensics.memdump.attributes
  - vmforensics.memdump.attributes.actiongroup
  - ansible.builtin.action_common_attributes.flow
attributes:
  check_mode:
    support: full
    details:
      - Nothing is written or downloaded; C(changed) says whether events would be appended or the image downloaded.
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
    description: The evidence directory on the controller; the incident's directory is C(<evidence_dir>/<label>).
    type: path
    required: true
  label:
    description: The incident label (1-128 characters of C([A-Za-z0-9._:@+-])).
    type: str
    required: true
  host:
    description:
      - The libvirt host's name, for the evidence sub-directory and the events.
      - Defaults to C(inventory_hostname).
    type: str
  vm:
    description: The VM name as it was requested (not as the service answers it).
    type: str
    required: true
  dump_id:
    description: The dump id (32 lowercase hex characters).
    type: str
    required: true
  record:
    description:
      - The service's record of the dump as M(vmforensics.memdump.memdump_wait) returned it.
      - With O(download=false) the events are written from it and the controller does not contact the
        service; with O(download=true) the record is read again from the service and must agree.
    type: dict
  download:
    description: Download the image. V(false) only records the C(acquired) event.
    type: bool
    default: true
  retries:
    description: How many times a cut download is resumed (C(Range)) before the task fails.
    type: int
    default: 5
  retry_delay:
    description: Seconds between resumes.
    type: float
    default: 1.0
  signing_key:
    description:
      - OpenSSH private key (without passphrase, or in ssh-agent) that signs every event with
        C(ssh-keygen -Y sign -n memdump-custody).
      - Without it the events are written unsigned (their C(signature) is null) and the task warns;
        M(vmforensics.memdump.memdump_verify) reports them.
    type: path
  operator:
    description:
      - Who runs the acquisition. Defaults to the AWX user (C(tower_user_name), C(awx_user_name)),
        else the controller's user. The AWX job id (C(tower_job_id), C(awx_job_id)) is recorded too.
    type: str
  collection_version:
    description: Recorded in the events; defaults to this collection's version.
    type: str
notes:
  - Needs C(ssh-keygen) (Debian package openssh-client) on the controller to sign.
seealso:
  - module: vmforensics.memdump.memdump_wait
  - module: vmforensics.memdump.memdump_delete
  - module: vmforensics.memdump.memdump_verify
'''

EXAMPLES = r'''
- name: Collect the completed dumps to the controller
  vmforensics.memdump.memdump_collect:
    collect_url: https://hv01.example.com:5001
    collect_ca_path: /etc/memdump/ca.pem
    token: "{{ memdump_service_token }}"
    evidence_dir: /srv/evidence
    label: IR-2026-042
    vm: "{{ item.vm }}"
    dump_id: "{{ item.dump_id }}"
    signing_key: /etc/memdump/custody_ed25519
  loop: "{{ done.completed }}"
  loop_control:
    label: "{{ item.vm }} {{ item.dump_id }}"
'''

RETURN = r'''
vm:
  description: The VM name (as requested).
  returned: always
  type: str
  sample: web01
dump_id:
  description: The dump id.
  returned: always
  type: str
  sample: 74f87f396c484b7ca57fb50145129c58
evidence_file:
  description: The image's path relative to the incident directory; null with O(download=false).
  returned: always
  type: str
  sample: hv01/web01_74f87f396c484b7ca57fb50145129c58.elf
path:
  description: The image's absolute path on the controller; null with O(download=false).
  returned: always
  type: str
sha256:
  description: The image's SHA-256 (the service's, equal to what was received).
  returned: always
  type: str
size_bytes:
  description: The image's size.
  returned: always
  type: int
downloaded:
  description: Whether the image was downloaded by this task.
  returned: always
  type: bool
reused:
  description: Whether an identical file was already there (verified, not downloaded again).
  returned: always
  type: bool
resumes:
  description: How many times a cut download was resumed.
  returned: always
  type: int
custody_log:
  description: Path of the incident's custody log.
  returned: always
  type: str
events:
  description: The events this task appended (C(seq) and C(event)).
  returned: always
  type: list
  elements: dict
  sample: [{seq: 0, event: acquired}, {seq: 1, event: collected}, {seq: 2, event: verified}]
marked_collected:
  description:
    - Whether the service now knows that this image was collected and verified (C(POST /api/dumps/{id}/collected)),
      so that its retention (C(--retention-days), C(--max-bytes)) may remove it from the host. V(false) for a service
      without that feature, or when telling it failed (a warning says why). Not returned without O(download).
  returned: when O(download=true) and not in check mode
  type: bool
  sample: true
signed:
  description: Whether the events were signed.
  returned: always
  type: bool
custody_head:
  description:
    - The custody log's chain head after this task, C(label), C(seq) (of the last event) and C(hash) (hex
      SHA-256 of its line). The InfluxDB callback records it (measurement C(memdump_custody)).
  returned: always
  type: dict
  sample: {label: IR-2026-042, seq: 2, hash: 5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017c592}
witnessed_by_service:
  description: Whether the service now keeps RV(custody_head) as a witness.
  returned: when O(download=true) and not in check mode
  type: bool
rules_published:
  description: Whether the service published its rules in C(/health) (else its documented defaults were used).
  returned: always
  type: bool
'''
