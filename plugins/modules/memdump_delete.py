#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: memdump_delete
short_description: Delete a collected memory image from the libvirt host, recorded in the custody log
version_added: 0.1.0
description:
  - Deletes the image of one completed dump on the service host through C(DELETE /api/dumps/{id});
    the service keeps the record (C(file_deleted=true)).
  - With O(evidence_dir) and O(label) (what role vmforensics.memdump.memdump_acquire passes) the
    deletion is a recorded transaction, run by the action plugin on the controller. First the image's
    collection is verified in full, as M(vmforensics.memdump.memdump_verify) does for one image - the
    custody log's chain, every signature against O(allowed_signers) when given (else the signatures are
    not checked and the events say so), and a re-hash of the controller's copy - and the log must hold a
    C(verified) event of this dump from this O(host). Then a signed C(deleting) event (the intent) is
    appended, the module deletes on the host, and the outcome is appended, C(deleted_from_host) or
    C(delete_failed). If the run stops in between, the log shows the intent without an outcome and the
    next run completes it (an image already gone is recorded as such).
  - Without O(evidence_dir), O(sha256) is required; the service deletes only an image whose recorded
    SHA-256 is that one, nothing is recorded, and the task warns. Use this only for a copy you verified
    yourself.
  - The module refuses to delete when the service's record names another VM than O(vm), has another
    SHA-256 than O(sha256), or is not C(completed) (a queued dump would be cancelled, a running one cannot be).
  - An image already deleted is not a change.
author:
  - vmforensics maintainers (@vmforensics)
extends_documentation_fragment:
  - vmforensics.memdump.connection
  - vmforensics.memdump.attributes
  - vmforensics.memdump.attributes.actiongroup
attributes:
  check_mode:
    support: full
    details:
      - Reads the record and says whether the image would be deleted; deletes nothing and writes no event.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  dump_id:
    description: The dump whose image is deleted.
    type: str
    required: true
  vm:
    description: The VM the dump must belong to.
    type: str
  sha256:
    description: The SHA-256 the service's record must have (the one verified on the controller).
    type: str
  evidence_dir:
    description:
      - The controller's evidence directory. With O(label), the deletion needs a verified collection of
        the dump in C(<evidence_dir>/<label>/custody.jsonl) and is recorded there (intent and outcome).
    type: path
  label:
    description: The incident label (with O(evidence_dir)).
    type: str
  host:
    description: The host's name in the custody log; defaults to C(inventory_hostname).
    type: str
  allowed_signers:
    description:
      - OpenSSH allowed-signers file against which the custody log's signatures are verified before the
        deletion. Without it the signatures are not checked (the C(deleting) event records
        C(signatures_checked=false)); the chain and the image's hash always are.
    type: path
  allow_unsigned:
    description:
      - Accept unsigned events in the custody log when O(allowed_signers) is given (without it no signature is
        checked, and unsigned events are accepted too).
    type: bool
    default: false
  signing_key:
    description: OpenSSH private key that signs the events (see M(vmforensics.memdump.memdump_collect)).
    type: path
  operator:
    description: Who deletes; defaults to the AWX user, else the controller's user.
    type: str
  collection_version:
    description: Recorded in the events; defaults to this collection's version.
    type: str
seealso:
  - module: vmforensics.memdump.memdump_collect
'''

EXAMPLES = r'''
- name: Delete the verified images from the host, recording it in the custody log
  vmforensics.memdump.memdump_delete:
    dump_id: "{{ item.dump_id }}"
    vm: "{{ item.vm }}"
    evidence_dir: /srv/evidence
    label: IR-2026-042
  loop: "{{ collected.results }}"
  loop_control:
    label: "{{ item.vm }} {{ item.dump_id }}"
'''

RETURN = r'''
dump:
  description: The service's record after the deletion (or, in check mode, before it).
  returned: success
  type: dict
  sample: {dump_id: 74f87f396c484b7ca57fb50145129c58, vm: web01, file_deleted: true, dump_path: null}
deleted:
  description: Whether the image was deleted (or would be, in check mode) by this task.
  returned: always
  type: bool
event:
  description: The C(seq) of the outcome event (C(deleted_from_host) or C(delete_failed)) appended to the custody log.
  returned: when recorded
  type: int
intent:
  description: The C(seq) of the C(deleting) event this deletion completes.
  returned: when recorded
  type: int
checked:
  description:
    - What was verified before the deletion - C(chain_events), C(signatures_verified), C(signatures_not_checked),
      C(signers), C(images_rehashed).
  returned: with O(evidence_dir)
  type: dict
custody_head:
  description: The custody log's chain head C({label, seq, hash}) after this task.
  returned: with O(evidence_dir)
  type: dict
'''

from ansible_collections.vmforensics.memdump.plugins.module_utils._connection_options import delete_argspec
from ansible_collections.vmforensics.memdump.plugins.module_utils._module import MemdumpModule


def run(module):
    params = module.params
    dump_id = params['dump_id']
    client = module.client
    record = client.get_dump(dump_id)
    if params['vm'] and record.get('vm') != params['vm']:
        module.fail_json(msg='dump %s belongs to VM %r, not %r: not deleted' % (dump_id, record.get('vm'), params['vm']),
                         dump=record, deleted=False)
    if params['sha256'] and record.get('sha256') != params['sha256']:
        module.fail_json(msg='dump %s has SHA-256 %s on the service, the collected image %s: not deleted'
                         % (dump_id, record.get('sha256'), params['sha256']), dump=record, deleted=False)
    if record.get('file_deleted'):
        module.exit_json(changed=False, deleted=False, dump=record)
    if record.get('state') != 'completed':
        module.fail_json(msg='dump %s is %s: only the image of a completed dump is deleted' % (dump_id, record.get('state')),
                         dump=record, deleted=False)
    if module.check_mode:
        module.exit_json(changed=True, deleted=True, dump=record)
    record = client.delete_dump(dump_id)
    module.exit_json(changed=True, deleted=True, dump=record)


def main():
    module = MemdumpModule(
        argument_spec=delete_argspec(),
        required_together=[('evidence_dir', 'label')],
        supports_check_mode=True,
    )
    module.run(run)


if __name__ == '__main__':
    main()
