#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: memdump_wait
short_description: Wait until memory dumps on the memdump service are completed or failed
version_added: 0.1.0
description:
  - Waits until every named dump is C(completed) or C(failed), and returns their final records
    (path, size, SHA-256, timings).
  - Name the dumps with O(dumps) (what M(vmforensics.memdump.memdump_trigger) registered) or with
    O(vms) and O(label) (the newest dump of each VM with that label).
  - The first request reads the dumps; if all are final, that is the only request. Otherwise the
    module asks the service's C(/health) once which optional features it offers.
  - When the C(features) of C(/health) include C(wait), each request is held by the service until a
    dump changes state (at most 60 seconds) and asked again at once, so completion is noticed within
    milliseconds. Otherwise (a service with only the core API, a C(/health) that answers 404 or
    something other than JSON) it asks every O(wait_sleep) seconds.
  - Connection errors during the wait (the service restarts, the network drops), also on C(/health),
    are retried every O(wait_sleep) seconds until the deadline.
  - Fails when O(wait_timeout) passes, naming every VM still pending with its state and progress, and
    when a dump failed, naming each VM and the service's reason, unless O(allow_failed=true).
  - Never changes anything; C(changed) is always V(false).
  - In check mode, returns the current state at once without waiting and without failing for
    dumps still pending (a dump that already failed still fails the task unless O(allow_failed)).
    Dumps that memdump_trigger would start in check mode have no id yet and are reported as pending.
author:
  - vmforensics maintainers (@vmforensics)
extends_documentation_fragment:
  - vmforensics.memdump.connection
  - vmforensics.memdump.attributes
  - vmforensics.memdump.attributes.actiongroup
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
notes:
  - O(wait_timeout) is the deadline of the whole wait; O(request_timeout) limits each HTTP request
    (a held request adds the time it asks the service to hold it). The names follow
    C(kubernetes.core); no module of the collection has an option called C(timeout).
options:
  dumps:
    description:
      - The dumps to wait for. Accepts the RV(vmforensics.memdump.memdump_trigger#module:dumps) list
        (records with C(dump_id) and C(vm)), the RV(vmforensics.memdump.memdump_trigger#module:dump_ids)
        dict (VM name to dump id), a list of dump ids, or the whole registered result of
        M(vmforensics.memdump.memdump_trigger).
      - Mutually exclusive with O(vms).
    type: raw
  vms:
    description:
      - Wait for the newest dump of each of these VMs (with O(label), the newest with that label).
      - Fails if a VM has no such dump.
    type: list
    elements: str
    aliases: [vm_ids]
  label:
    description:
      - With O(vms), only dumps with this label count. Without O(vms), wait for the newest dump of
        every VM that has a dump with this label.
      - Mutually exclusive with O(dumps).
    type: str
  wait_timeout:
    description:
      - Deadline in seconds for the whole wait.
      - Not the limit of each HTTP request, which is O(request_timeout).
    type: float
    default: 3600
  wait_sleep:
    description:
      - Seconds between two requests when the service does not hold requests (its C(/health) does not
        list the C(wait) feature), and between retries after a connection error.
      - A service that holds requests is asked again as soon as a held answer comes back.
    type: float
    default: 5
  allow_failed:
    description:
      - Do not fail the task when a dump failed; the VM is listed in RV(failed_vms).
    type: bool
    default: false
seealso:
  - module: vmforensics.memdump.memdump_trigger
  - module: vmforensics.memdump.memdump_info
'''

EXAMPLES = r'''
- name: Dump and wait, with the connection set once for the whole group
  hosts: hypervisors
  gather_facts: false
  module_defaults:
    group/vmforensics.memdump.memdump:
      url: https://{{ inventory_hostname }}:5001
      token: "{{ memdump_service_token }}"
      request_timeout: 20
  tasks:
    - name: Start the dumps
      vmforensics.memdump.memdump_trigger:
        vms: [web01, db01]
        label: IR-2026-042
      register: trigger

    - name: Wait up to 30 minutes for both
      vmforensics.memdump.memdump_wait:
        dumps: "{{ trigger.dumps }}"
        wait_timeout: 1800
      register: done

    - name: Record the hashes
      ansible.builtin.copy:
        dest: /var/lib/ir/IR-2026-042-hashes.txt
        content: |
          {% for d in done.dumps %}
          {{ d.sha256 }}  {{ d.dump_path }}
          {% endfor %}
        mode: '0600'
      delegate_to: localhost

- name: In a later play, wait for the incident's dumps by VM and label, tolerating failures
  hosts: hv01
  gather_facts: false
  tasks:
    - name: Wait by VM and label
      vmforensics.memdump.memdump_wait:
        url: http://127.0.0.1:5001
        vms: [web01, db01, app01]
        label: IR-2026-042
        allow_failed: true
      register: done

    - name: Report what failed
      ansible.builtin.debug:
        msg: "No dump of {{ done.failed_vms | join(', ') }}"
      when: done.failed_vms | length > 0
'''

RETURN = r'''
dumps:
  description:
    - The final record of every dump, in the order they were named, with every field the service
      returns (see the service's API documentation).
    - On a timeout (failed task) the last known records.
  returned: always
  type: list
  elements: dict
  contains:
    vm:
      description: The VM name.
      type: str
      sample: web01
    dump_id:
      description: The service's id of the dump.
      type: str
      sample: 5f0c2d3e4b8a4f6e9d1c7a2b3e4f5a6b
    state:
      description: C(completed) or C(failed) (in check mode or on a timeout also C(queued) or C(running)).
      type: str
      sample: completed
    dump_path:
      description: Absolute path of the image on the service's host; V(null) unless completed.
      type: str
      sample: /var/lib/memdump/dumps/IR-2026-042/web01-20261125T225001Z.elf
    size_bytes:
      description: Size of the image in bytes.
      type: int
      sample: 134480867
    sha256:
      description: Hex SHA-256 of the image.
      type: str
      sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    started_at:
      description: When the dump started (ISO 8601 UTC).
      type: str
      sample: '2026-11-25T22:50:01.123456Z'
    finished_at:
      description: When the dump completed or failed (ISO 8601 UTC).
      type: str
      sample: '2026-11-25T22:50:01.453456Z'
    duration_sec:
      description: Seconds from start to finish.
      type: float
      sample: 0.33
    message:
      description: The service's status message, or the reason of a failure.
      type: str
      sample: completed
  sample:
    - vm: web01
      dump_id: 5f0c2d3e4b8a4f6e9d1c7a2b3e4f5a6b
      state: completed
      label: IR-2026-042
      dump_path: /var/lib/memdump/dumps/IR-2026-042/web01-20261125T225001Z.elf
      size_bytes: 134480867
      sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
      started_at: '2026-11-25T22:50:01.123456Z'
      finished_at: '2026-11-25T22:50:01.453456Z'
      duration_sec: 0.33
      message: completed
dump_ids:
  description: VM name to dump id.
  returned: always
  type: dict
  sample:
    web01: 5f0c2d3e4b8a4f6e9d1c7a2b3e4f5a6b
summary:
  description:
    - Per VM (the name the dump was started for), what a responder reads about its dump. Role
      vmforensics.memdump.memdump_acquire shows it as it is.
  returned: always
  type: dict
  sample:
    web01: {state: completed, dump: new, dump_id: 5f0c2d3e4b8a4f6e9d1c7a2b3e4f5a6b, size_bytes: 134480867,
            sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08, paused_sec: 0.004, method: live,
            method_reason: "auto: libvirt accepted a live dump (the guest can migrate)",
            message: "live dump completed: the guest kept running, paused 0.004 s for the last pages", reason: null}
    db01: {state: failed, dump: new, dump_id: 0a1b2c3d4e5f40718293a4b5c6d7e8f9, size_bytes: null, sha256: null,
           paused_sec: null, method: live, method_reason: null,
           message: "VM 'db01' does not exist on qemu:///system; check the name: ...", reason: no_such_vm}
  contains:
    state:
      description: C(completed), C(failed), C(queued) or C(running) (the last two after a timeout or in check mode).
      type: str
    dump:
      description:
        - V(new) when memdump_trigger started the dump, V(reused) when it got an existing one back.
        - V(null) when O(dumps) did not say (dump ids only, or O(vms) and O(label)).
      type: str
    reason:
      description:
        - Why the dump failed, V(null) unless it did. V(no_such_vm) and V(vm_not_running) fail again the same way on
          a re-run; other values are the service's other error codes (see its API documentation).
        - The service's C(error_code) when its record has one. From a service without error codes, decided from the
          host's VM listing (C(GET /api/vms)), asked once when a dump failed (V(no_such_vm), V(vm_not_running)), else
          V(failed).
      type: str
    method:
      description:
        - The method the service used, V(live) or V(memory-only) (V(auto) while a dump asked for with V(auto) is queued).
      type: str
    method_reason:
      description:
        - For O(vmforensics.memdump.memdump_trigger#module:method=auto), why the service took that method, in libvirt's
          words where libvirt refused the live dump (a migration blocker); V(null) otherwise.
      type: str
failure_message:
  description:
    - When a dump failed, the message that names each such VM with the service's reason and says what to do
      (check the name, start the VM, or re-run with the same label); V(null) when none failed.
    - The task's C(msg) when it fails for failed dumps, and what role vmforensics.memdump.memdump_acquire fails with.
  returned: always
  type: str
  sample: >-
    Memory acquisition failed for db01: db01 (dump 0a1b2c3d4e5f40718293a4b5c6d7e8f9): VM 'db01' does not exist on
    qemu:///system; check the name: the domains there are web01. db01: no such VM on this host (its service does not
    list it), so a re-run fails the same way: check the name against the VMs the host runs and re-run with the
    corrected name (the same label keeps what succeeded).
completed:
  description: Names of the VMs whose dump completed.
  returned: always
  type: list
  elements: str
  sample: [web01]
failed_vms:
  description:
    - Names of the VMs whose dump failed.
    - Not called C(failed), because Ansible reads a true C(failed) key as a failed task.
  returned: always
  type: list
  elements: str
  sample: [db01]
pending:
  description: Names of the VMs whose dump is not finished (check mode, or a timeout).
  returned: always
  type: list
  elements: str
  sample: []
elapsed:
  description: Seconds spent waiting.
  returned: always
  type: float
  sample: 0.41
'''

from ansible.module_utils.common.text.converters import to_text

from ansible_collections.vmforensics.memdump.plugins.module_utils._module import MemdumpModule, generate_argspec
from ansible_collections.vmforensics.memdump.plugins.module_utils._vms import FAILED, NO_SUCH_VM, NOT_RUNNING, failure_reasons
from ansible_collections.vmforensics.memdump.plugins.module_utils._wait import DumpWaiter, WaitTimeout


class Target(object):
    """One dump to wait for: its id (None if memdump_trigger only predicted it), VM name and whether
    memdump_trigger started it (None when not known)."""

    def __init__(self, dump_id, vm=None, created=None):
        self.dump_id = dump_id
        self.vm = vm
        self.created = created

    @property
    def name(self):
        return self.vm or self.dump_id


def targets_from_dumps(module, value):
    """Normalize O(dumps): trigger's records, a VM->id dict, a list of ids or the whole registered result."""
    if isinstance(value, dict) and isinstance(value.get('dumps'), list):
        value = value['dumps']
    if isinstance(value, dict):
        return [Target(to_text(dump_id) if dump_id else None, to_text(vm)) for vm, dump_id in value.items()]
    if isinstance(value, (str, bytes)):
        value = [value]
    if not isinstance(value, list):
        module.fail_json(msg='dumps must be a list of dump records, a list of dump ids or a dict of VM name to '
                             'dump id, not %s' % type(value).__name__)
    targets = []
    for item in value:
        if isinstance(item, dict):
            if 'dump_id' not in item:
                module.fail_json(msg='dumps: a record without dump_id: %s' % item)
            created = item.get('created')
            targets.append(Target(to_text(item['dump_id']) if item['dump_id'] else None,
                                  to_text(item['vm']) if item.get('vm') else None,
                                  created if isinstance(created, bool) else None))
        elif isinstance(item, (str, bytes)) and item:
            targets.append(Target(to_text(item)))
        else:
            module.fail_json(msg='dumps: %r is neither a dump record nor a dump id' % (item,))
    return targets


def targets_from_vms(module, client, vms, label):
    records = client.list_all_dumps(vms=vms, label=label)
    newest = {}
    for record in records:  # newest first
        if label and record.get('label', label) != label:
            continue
        newest.setdefault(record.get('vm'), record)
    if vms is None:
        vms = sorted(newest)
        if not vms:
            module.fail_json(msg='no dump with label %s on the memdump service at %s' % (label, client.url))
    missing = [vm for vm in vms if vm not in newest]
    if missing:
        module.fail_json(msg='no dump%s of VM(s) %s on the memdump service at %s; start one with '
                             'vmforensics.memdump.memdump_trigger' % (' with label %s' % label if label else '',
                                                                      ', '.join(missing), client.url))
    return [Target(newest[vm]['dump_id'], vm) for vm in vms]


def summarize(module, client, targets, records):
    """The records in target order, the names per state, and the per-VM summary the role shows."""
    dumps, completed, failed, pending, summary = [], [], [], [], {}
    for target in targets:
        record = records.get(target.dump_id) if target.dump_id else None
        if record is None:
            record = {'vm': target.vm, 'dump_id': target.dump_id, 'state': None,
                      'message': 'not started yet (memdump_trigger ran in check mode)' if not target.dump_id else 'unknown'}
        if target.vm and record.get('vm') not in (None, target.vm):
            # The name the dump was asked for names the evidence; a service answering another VM's record is refused.
            module.fail_json(msg='the memdump service at %s answered dump %s with the record of VM %r, but it was started for VM %r: '
                                 'refused' % (client.url, target.dump_id, record.get('vm'), target.vm))
        name = target.vm or record.get('vm') or target.name
        dumps.append(record)
        state = record.get('state')
        if state == 'completed':
            completed.append(name)
        elif state == 'failed':
            failed.append(name)
        else:
            pending.append(name)
        summary[name] = dict(
            state=state, dump=None if target.created is None else ('new' if target.created else 'reused'),
            dump_id=record.get('dump_id'), size_bytes=record.get('size_bytes'), sha256=record.get('sha256'),
            paused_sec=record.get('paused_sec'), method=record.get('method'), method_reason=record.get('method_reason'),
            message=record.get('message') or '', reason=None)
    if failed:
        reasons = failure_reasons(client, dumps)
        for name in failed:
            summary[name]['reason'] = reasons.get(summary[name]['dump_id'], FAILED)
    return dumps, completed, failed, pending, summary


def failure_message(summary):
    """What the responder reads when dumps failed: each VM with the service's reason, then what to do, by reason."""
    failed = [(name, s) for name, s in summary.items() if s['state'] == 'failed']
    if not failed:
        return None

    def having(reason):
        return [name for name, s in failed if s['reason'] == reason]

    text = ['Memory acquisition failed for %s: %s.' % (', '.join(name for name, dummy in failed), '; '.join(
        '%s (dump %s): %s' % (name, s['dump_id'], s['message'] or 'no reason given') for name, s in failed))]
    if having(NO_SUCH_VM):
        text.append('%s: no such VM on this host (its service does not list it), so a re-run fails the same way: check the name '
                    'against the VMs the host runs and re-run with the corrected name (the same label keeps what succeeded).'
                    % ', '.join(having(NO_SUCH_VM)))
    if having(NOT_RUNNING):
        text.append('%s: not running on this host, so it has no memory to dump: start it, or leave it out.' % ', '.join(having(NOT_RUNNING)))
    if having(FAILED):
        text.append('Re-run with the same label to retry only %s.' % ', '.join(having(FAILED)))
    return ' '.join(text)


def run(module):
    params = module.params
    client = module.client
    if params['dumps'] is not None:
        targets = targets_from_dumps(module, params['dumps'])
    else:
        targets = targets_from_vms(module, client, params['vms'], params['label'])
    if not targets:
        module.exit_json(changed=False, dumps=[], dump_ids={}, summary={}, failure_message=None, completed=[], failed_vms=[],
                         pending=[], elapsed=0.0)

    ids = []
    for target in targets:
        if target.dump_id and target.dump_id not in ids:
            ids.append(target.dump_id)
    if not module.check_mode:
        unknown = [t.name for t in targets if not t.dump_id]
        if unknown:
            module.fail_json(msg='no dump id for %s: pass the dumps registered by memdump_trigger outside check mode'
                                 % ', '.join(unknown))

    def fetch(dump_ids, wait, marker):
        records, new_marker = client.list_dumps(dump_ids=dump_ids, wait=wait, marker=marker)
        wanted = set(dump_ids)
        return [r for r in records if r.get('dump_id') in wanted], new_marker

    def holds_requests():
        return 'wait' in client.features()

    waiter = DumpWaiter(fetch, holds_requests, params['wait_timeout'], params['wait_sleep'])

    def reject_unknown(found):
        known = set(r.get('dump_id') for r in found)
        unknown = [t for t in targets if t.dump_id and t.dump_id not in known]
        if unknown:
            module.fail_json(msg='dump(s) not known to the memdump service at %s: %s' % (
                client.url, ', '.join('%s%s' % (t.dump_id, ' (VM %s)' % t.vm if t.vm else '') for t in unknown)))

    records, elapsed = {}, 0.0
    if ids and module.check_mode:
        found = waiter.current(ids)
        reject_unknown(found)
        records = dict((r['dump_id'], r) for r in found)
    elif ids:
        try:
            records, elapsed = waiter.wait(ids, url=client.url, on_first=reject_unknown)
        except WaitTimeout as e:
            dumps, completed, failed, pending, summary = summarize(module, client, targets, e.records)
            module.fail_json(msg=e.msg, dumps=dumps, dump_ids=dict((t.name, t.dump_id) for t in targets), summary=summary,
                             failure_message=failure_message(summary), completed=completed, failed_vms=failed, pending=pending,
                             elapsed=round(e.elapsed, 3))

    dumps, completed, failed, pending, summary = summarize(module, client, targets, records)
    result = dict(changed=False, dumps=dumps, dump_ids=dict((t.name, t.dump_id) for t in targets), summary=summary,
                  failure_message=failure_message(summary), completed=completed, failed_vms=failed, pending=pending,
                  elapsed=round(elapsed, 3))
    if failed and not params['allow_failed']:
        module.fail_json(msg='%s (memdump service at %s)' % (result['failure_message'], client.url), **result)
    module.exit_json(**result)


def main():
    argument_spec = generate_argspec(
        dumps=dict(type='raw'),
        vms=dict(type='list', elements='str', aliases=['vm_ids']),
        label=dict(type='str'),
        wait_timeout=dict(type='float', default=3600),
        wait_sleep=dict(type='float', default=5),
        allow_failed=dict(type='bool', default=False),
    )
    module = MemdumpModule(
        argument_spec=argument_spec,
        mutually_exclusive=[('dumps', 'vms'), ('dumps', 'label')],
        required_one_of=[('dumps', 'vms', 'label')],
        supports_check_mode=True,
    )
    module.run(run)


if __name__ == '__main__':
    main()
