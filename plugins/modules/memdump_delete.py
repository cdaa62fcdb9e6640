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
  - With O(evidence_dir) and O(label) (what role vmforensics.memdump.memdump_acquire passes), the
    action plugin on the controller first requires a C(verified) event of this dump in the incident's
    custody log, passes the verified SHA-256 as O(sha256), and after the deletion appends a
    C(deleted_from_host) event (signed with O(signing_key)). Without a verified collection nothing is deleted.
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
      - The controller's evidence directory. With O(label), the deletion needs a C(verified) event of
        the dump in C(<evidence_dir>/<label>/custody.jsonl) and is recorded there. Used by the action plugin
        on the controller.
    type: path
  label:
    description: The incident label (with O(evidence_dir)).
    type: str
  host:
    description: The host's name in the custody log; defaults to C(inventory_hostname).
    type: str
  signing_key:
    description: OpenSSH private key that signs the C(deleted_from_host) event (see M(vmforensics.memdump.memdump_collect)).
    type: path
  operator:
    description: Who deletes; defaults to the AWX user, else the controller's user.
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
  description: The C(seq) of the C(deleted_from_host) event appended to the custody log, if any.
  returned: when recorded
  type: int
'''

from ansible_collections.vmforensics.memdump.plugins.module_utils._module import MemdumpModule, generate_argspec


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
        argument_spec=generate_argspec(
            dump_id=dict(type='str', required=True),
            vm=dict(type='str'),
            sha256=dict(type='str'),
            evidence_dir=dict(type='path'),
            label=dict(type='str'),
            host=dict(type='str'),
            signing_key=dict(type='path', no_log=False),
            operator=dict(type='str'),
        ),
        required_together=[('evidence_dir', 'label')],
        supports_check_mode=True,
    )
    module.run(run)


if __name__ == '__main__':
    main()
