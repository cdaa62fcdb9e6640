#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: memdump_trigger
short_description: Start memory dumps of libvirt VMs through the memdump service, only where missing
version_added: 0.1.0
description:
  - Asks the memdump service on a libvirt host to dump the memory of one or more virtual machines.
  - Idempotent per VM, following the service's reuse rules, which the service alone applies; the
    module sends one request and reports what the service answers. A VM with a dump in flight
    (C(queued) or C(running)) of the same O(label), O(method) and O(format) gets that dump back; another
    request gets its own dump, queued until the one in flight is done. With O(label) and without
    O(force), a VM that already has a C(completed) dump with that label gets it back. Otherwise a new
    dump is started; a VM whose last dump with the label C(failed) is dumped again.
  - The task reports C(changed) if the service says it started at least one new dump
    (RV(dumps[].created)).
  - A request retried after a dropped connection carries the same C(request_id) (a UUID chosen once
    per task run), so a retry can not start a second dump.
  - Returns at once; use M(vmforensics.memdump.memdump_wait) to wait for the dumps to finish.
  - In check mode no dump is started. If the service's C(/health) lists the C(dry_run) feature, the
    module asks the service what it would do (C(dry_run) request) and reports that; VMs that would
    get a new dump have RV(dumps[].dump_id) V(null).
  - In check mode against a service without the C(dry_run) feature (a service with only the core
    API) nothing is sent that could start a dump, because such a service ignores C(dry_run) and would
    dump. Every VM is then reported as one that would get a new dump, so the prediction may say
    C(changed) where the real run reuses dumps.
  - A service with only the core API does not say whether it started a dump (no C(created) in its
    answer) and starts one per request; its records are reported as created.
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
    support: partial
    details:
      - Idempotent when O(label) is set and O(force=false). Without a label every run whose VMs have no
        dump in flight starts new dumps.
      - Against a service with only the core API every run reports C(changed).
      - In check mode, a service without the C(dry_run) feature gets every VM predicted as changed.
options:
  vms:
    description:
      - Names of the libvirt domains to dump, as libvirt knows them on the service's host.
      - A VM that does not exist is not a task failure here; its dump ends C(failed) with a clear
        message, which M(vmforensics.memdump.memdump_wait) reports.
    type: list
    elements: str
    required: true
    aliases: [vm_ids]
  label:
    description:
      - Incident label recorded with the dumps, for example V(IR-2026-042)
        (1 to 128 characters of C([A-Za-z0-9._:@+-])).
      - Makes the task idempotent, see the description.
    type: str
  format:
    description:
      - Format of the dump image.
      - V(elf) is a memory-only ELF core, readable by Volatility 3 and C(crash).
      - Which kdump compressions work depends on the QEMU build of the host; V(win-dmp) needs a
        Windows guest.
      - If not set, the service's default (V(elf)) is used.
      - A live dump always writes QEMU's migration stream, format C(qemu-migration); with O(method=live) leave this unset;
        with O(method=auto) this is the format of the memory-only dump taken where the guest cannot be dumped live.
    type: str
    choices: [elf, kdump-zlib, kdump-lzo, kdump-snappy, win-dmp]
  method:
    description:
      - How the service dumps the guest.
      - V(auto) asks for a live dump and, where libvirt refuses one before touching the guest (a migration blocker such
        as a host device; or a host without a hypervisor that can migrate), the service takes a memory-only dump in
        O(format) instead. Each returned record says which in C(method) and why in C(method_reason), in libvirt's words.
      - V(memory-only) pauses the guest for the whole dump (seconds per GiB) and gives an image in O(format). It is the
        service's default and is not sent, so that a service with only the core API takes it too.
      - V(live) keeps the guest running and pauses it only for the last pages (milliseconds); the image is QEMU's
        migration stream (suffix C(.qevm)); the P(vmforensics.memdump.memdump_convert#module) module derives an ELF
        core from it that every analysis tool opens. Where libvirt cannot migrate the guest, the dump fails.
      - V(live) needs a service whose C(/health) lists it in C(methods); the module fails before sending anything
        otherwise, because a service without the field would ignore it and pause the guest.
      - V(auto) is sent as it is, in the one request a run makes. A service that refuses it (an older memdump service)
        gets the request again without a method, so it takes its default, memory-only, dump, and a warning names the
        service; a service with only the core API ignores the field and takes a memory-only dump too.
      - See C(docs/runbook.md) for when to force V(memory-only) or V(live).
    type: str
    choices: [auto, memory-only, live]
    default: auto
  force:
    description:
      - Start a new dump even if a C(completed) dump with O(label) exists.
      - A dump in flight with the same O(label), O(method) and O(format) is still reused; the service never runs two
        dumps of one VM at once.
    type: bool
    default: false
seealso:
  - module: vmforensics.memdump.memdump_wait
  - module: vmforensics.memdump.memdump_info
'''

EXAMPLES = r'''
- name: Dump the memory of two VMs for an incident and wait until both images are complete
  hosts: hypervisors
  gather_facts: false
  module_defaults:
    group/vmforensics.memdump.memdump:
      url: https://{{ inventory_hostname }}:5001
      token: "{{ memdump_service_token }}"
      ca_path: /etc/pki/memdump/ca.pem
  tasks:
    - name: Start the dumps (only where IR-2026-042 has none yet)
      vmforensics.memdump.memdump_trigger:
        vms:
          - web01
          - db01
        label: IR-2026-042
      register: trigger

    - name: Wait for them
      vmforensics.memdump.memdump_wait:
        dumps: "{{ trigger.dumps }}"
        wait_timeout: 1800
      register: done

    - name: Show where the images are
      ansible.builtin.debug:
        msg: "{{ item.vm }}: {{ item.dump_path }} sha256={{ item.sha256 }}"
      loop: "{{ done.dumps }}"

- name: Take a second, separate dump of one VM for the same incident
  hosts: hv01
  gather_facts: false
  tasks:
    - name: Force a new dump even though a completed one exists
      vmforensics.memdump.memdump_trigger:
        url: http://127.0.0.1:5001
        vms: [web01]
        label: IR-2026-042
        format: kdump-zlib
        force: true

- name: Dump a production database guest without stopping it
  hosts: hv01
  gather_facts: false
  tasks:
    - name: Live dump (paused for milliseconds; the image is read by Volatility 3)
      vmforensics.memdump.memdump_trigger:
        url: http://127.0.0.1:5001
        vms: [db01]
        label: IR-2026-042
        method: live
'''

RETURN = r'''
dumps:
  description:
    - One dump record per requested VM, in the order of O(vms) (duplicates removed), with every field
      the service returns (see the service's API documentation) plus RV(dumps[].created).
  returned: always
  type: list
  elements: dict
  contains:
    vm:
      description: The VM name as requested.
      type: str
      sample: web01
    dump_id:
      description: The service's id of the dump; V(null) in check mode for a dump that would be started.
      type: str
      sample: 5f0c2d3e4b8a4f6e9d1c7a2b3e4f5a6b
    state:
      description: C(queued), C(running), C(completed) or C(failed); V(null) in check mode for a dump that would be started.
      type: str
      sample: queued
    created:
      description:
        - Whether this task started the dump (in check mode, whether it would), as the service says.
        - V(true) when the service's answer does not say (a service with only the core API).
      type: bool
      sample: true
    label:
      description: The incident label.
      type: str
      returned: if the service reports it
      sample: IR-2026-042
  sample:
    - vm: web01
      dump_id: 5f0c2d3e4b8a4f6e9d1c7a2b3e4f5a6b
      state: queued
      created: true
      label: IR-2026-042
      format: elf
      progress: 0.0
      message: queued
      dump_path: null
      sha256: null
dump_ids:
  description: VM name to dump id, for M(vmforensics.memdump.memdump_wait) or later tasks.
  returned: always
  type: dict
  sample:
    web01: 5f0c2d3e4b8a4f6e9d1c7a2b3e4f5a6b
    db01: 0a1b2c3d4e5f40718293a4b5c6d7e8f9
created:
  description: Names of the VMs for which a new dump was started (would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: [web01]
request_id:
  description: The C(request_id) sent with the request that started the dumps; V(null) if nothing was started.
  returned: always
  type: str
  sample: 0d5e6c1a-2f3b-4c5d-8e9f-a0b1c2d3e4f5
'''

import time
import uuid

from ansible_collections.vmforensics.memdump.plugins.module_utils._client import FORMATS, MemdumpConnectionError, MemdumpHTTPError
from ansible_collections.vmforensics.memdump.plugins.module_utils._module import MemdumpModule, generate_argspec

# A POST whose connection dropped is sent again (same request_id) this many times in all.
POST_ATTEMPTS = 3
POST_RETRY_DELAY = 1.0


def unique(items):
    seen = set()
    return [x for x in items if not (x in seen or seen.add(x))]


def post_with_retry(client, vms, label, fmt, force, method, request_id=None, dry_run=False, sleep=time.sleep):
    for attempt in range(1, POST_ATTEMPTS + 1):
        try:
            return client.create_dumps(vms, label=label, fmt=fmt, force=force, request_id=request_id, dry_run=dry_run, method=method)
        except MemdumpConnectionError:
            if attempt == POST_ATTEMPTS:
                raise
            sleep(POST_RETRY_DELAY * attempt)
    raise AssertionError('unreachable')  # pragma: no cover


def offered_methods(client):
    """The methods the service's /health lists; none for one without the field (older, or only the core API)."""
    try:
        methods = client.health().get('methods')
    except MemdumpHTTPError:
        return []
    return methods if isinstance(methods, list) else []


def refuses_method(error):
    """The service refused the request for its method (a validation error that names the field)."""
    return error.status in (400, 422) and 'method' in (error.detail or '')


def predict(client, vms, label, fmt, force, method):
    """Check mode: the service's own answer to a dry run, or "every VM gets a new dump" without one."""
    if 'dry_run' in client.features():
        return post_with_retry(client, vms, label, fmt, force, method, dry_run=True)
    # A service without the feature would ignore dry_run and really dump: send nothing.
    return [{'vm': vm, 'dump_id': None, 'state': None, 'label': label, 'format': fmt, 'created': True} for vm in vms]


def run(module):
    params = module.params
    client = module.client
    vms = unique(params['vms'])
    label, fmt, force, method = params['label'], params['format'], params['force'], params['method']
    if not vms:
        module.fail_json(msg='vms must name at least one VM')
    if method == 'live' and 'live' not in offered_methods(client):
        module.fail_json(msg='the memdump service at %s does not offer live dumps (its /health lists no method live); '
                             'update the service or use method memory-only' % client.url)
    if method == 'memory-only':
        method = None  # the service's default: also what a service without the field (the core API) does

    request_id = None if module.check_mode else str(uuid.uuid4())

    def send(method):
        if module.check_mode:
            return predict(client, vms, label, fmt, force, method)
        return post_with_retry(client, vms, label, fmt, force, method, request_id=request_id)

    try:
        answer = send(method)
    except MemdumpHTTPError as e:
        if method != 'auto' or not refuses_method(e):
            raise
        # An older service: without auto it cannot tell whether libvirt would migrate the guest, so its default.
        if 'live' in offered_methods(client):
            module.warn('the memdump service at %s offers no method auto (an older version): its dumps are memory-only; '
                        'update the service, or set method live for guests that can migrate' % client.url)
        answer = send(None)
    by_vm = dict((r.get('vm'), r) for r in answer if isinstance(r, dict))
    dumps = []
    for vm in vms:
        record = by_vm.get(vm)
        if record is None:
            module.fail_json(msg='the memdump service at %s did not return a dump for VM %s%s'
                             % (client.url, vm, ' (request_id %s)' % request_id if request_id else ''), dumps=answer)
        if 'created' not in record:  # a service with only the core API starts a dump per request
            record = dict(record, created=True)
        dumps.append(record)

    created_vms = [r['vm'] for r in dumps if r['created']]
    module.exit_json(
        changed=bool(created_vms),
        dumps=dumps,
        dump_ids=dict((r['vm'], r.get('dump_id')) for r in dumps),
        created=created_vms,
        request_id=request_id if created_vms else None,
    )


def main():
    argument_spec = generate_argspec(
        vms=dict(type='list', elements='str', required=True, aliases=['vm_ids']),
        label=dict(type='str'),
        format=dict(type='str', choices=list(FORMATS)),
        method=dict(type='str', choices=['auto', 'memory-only', 'live'], default='auto'),
        force=dict(type='bool', default=False),
    )
    module = MemdumpModule(argument_spec=argument_spec, supports_check_mode=True)
    module.run(run)


if __name__ == '__main__':
    main()
