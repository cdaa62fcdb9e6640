#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: memdump_info
short_description: List the memory dumps on a memdump service and report its health
version_added: 0.1.0
description:
  - Returns the dumps known to the memdump service, all of them or filtered by O(vms), O(dump_ids),
    O(label) and O(state), newest first, and the service's health (libvirt connection, queue,
    supported formats and features).
  - A service that answers in pages (C(next_before)) is read page by page until the last one.
  - An unavailable service (unreachable, an untrusted TLS certificate, or a service that cannot reach
    libvirt) is not a task failure unless O(fail_on_unavailable=true). RV(service.status) is then
    V(unavailable), RV(service.error) says why, and a warning names the URL and the reason.
    A rejected token (HTTP 401) always fails the task.
  - Never changes anything; C(changed) is always V(false).
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
      - This action does not modify state.
  diff_mode:
    support: N/A
    details:
      - This action does not modify state.
  idempotent:
    support: full
options:
  vms:
    description: Only dumps of these VMs.
    type: list
    elements: str
    aliases: [vm_ids]
  dump_ids:
    description: Only these dumps.
    type: list
    elements: str
  label:
    description: Only dumps with this incident label.
    type: str
  state:
    description: Only dumps in this state.
    type: str
    choices: [queued, running, completed, failed]
  list_vms:
    description:
      - Also ask the service which VMs its host has (C(GET /api/vms)) and return them in RV(host_vms).
      - Fails the task when the service cannot say (unreachable, an older service without the listing, libvirt down),
        because a fleet-wide acquisition must not take "could not ask" for "does not run it".
    type: bool
    default: false
  fail_on_unavailable:
    description:
      - Fail the task when RV(service.status) is V(unavailable) (the service can not be reached, its
        TLS certificate is not trusted, or it can not reach libvirt), instead of returning it with a
        warning.
    type: bool
    default: false
seealso:
  - module: vmforensics.memdump.memdump_trigger
  - module: vmforensics.memdump.memdump_wait
'''

EXAMPLES = r'''
- name: Review an incident's dumps
  hosts: hypervisors
  gather_facts: false
  module_defaults:
    group/vmforensics.memdump.memdump:
      url: https://{{ inventory_hostname }}:5001
      token: "{{ memdump_service_token }}"
  tasks:
    - name: Stop here unless the service is up and can reach libvirt
      vmforensics.memdump.memdump_info:
        fail_on_unavailable: true

    - name: Report the service's state without failing (a warning says when it is unavailable)
      vmforensics.memdump.memdump_info:
      register: svc

    - name: The incident's completed dumps
      vmforensics.memdump.memdump_info:
        label: IR-2026-042
        state: completed
      register: done

    - name: Show them
      ansible.builtin.debug:
        msg: "{{ done.dumps | map(attribute='dump_path') | list }}"

    - name: The dumps of one VM
      vmforensics.memdump.memdump_info:
        vms: [web01]
'''

RETURN = r'''
dumps:
  description:
    - The matching dump records, newest first, with every field the service returns (see the
      service's API documentation). Empty if the service can not be reached.
    - A failed dump's record has C(reason), why it failed, as in
      RV(vmforensics.memdump.memdump_wait#module:summary) (V(no_such_vm), V(not_running) or V(failed)).
  returned: always
  type: list
  elements: dict
  sample:
    - vm: web01
      dump_id: 5f0c2d3e4b8a4f6e9d1c7a2b3e4f5a6b
      label: IR-2026-042
      state: completed
      format: elf
      progress: 100.0
      dump_path: /var/lib/memdump/dumps/IR-2026-042/web01-20261125T225001Z.elf
      size_bytes: 134480867
      sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
host_vms:
  description:
    - The libvirt domains of the service's host, sorted by name, with O(list_vms=true).
  returned: when O(list_vms=true)
  type: list
  elements: dict
  contains:
    name:
      description: The domain's name.
      type: str
    state:
      description: libvirt's state, for example C(running), C(paused), C(shut off).
      type: str
    uuid:
      description: The domain's UUID.
      type: str
    active:
      description: Whether the domain runs (has memory to dump), as libvirt says.
      type: bool
  sample:
    - {name: web01, state: running, uuid: 6695eb01-f6a4-8304-79aa-000000000001, active: true}
    - {name: old01, state: shut off, uuid: 6695eb01-f6a4-8304-79aa-000000000002, active: false}
vms:
  description: VM name to the ids of its matching dumps, newest first.
  returned: always
  type: dict
  sample:
    web01: [5f0c2d3e4b8a4f6e9d1c7a2b3e4f5a6b]
service:
  description: The service's health, as its C(/health) route reports it, plus RV(service.url).
  returned: always
  type: dict
  contains:
    status:
      description:
        - V(ok), or V(unavailable) when the service can not be reached, its TLS certificate is not trusted, or it can not reach libvirt.
        - V(unknown) for a service that offers no health route.
      type: str
      sample: ok
    url:
      description: The service URL that was asked.
      type: str
      sample: http://127.0.0.1:5001
    error:
      description: Why the service is unavailable.
      type: str
      returned: when the service is unreachable or has no health route
      sample: 'cannot reach the memdump service at http://127.0.0.1:5001 (GET /health): [Errno 111] Connection refused'
    version:
      description: The service's version.
      type: str
      returned: when the service reports it
      sample: 0.1.0
    libvirt:
      description: The service's libvirt connection (C(uri), C(connected), C(driver), C(version), C(memory_only), C(error)).
      type: dict
      returned: when the service reports it
      sample: {uri: 'qemu:///system', connected: true, driver: QEMU, version: 9.0.0, memory_only: true, error: null}
    queue:
      description: Dumps C(queued) and C(running), and C(max_parallel).
      type: dict
      returned: when the service reports it
      sample: {queued: 0, running: 1, max_parallel: 2}
    formats:
      description: Dump formats the service accepts.
      type: list
      elements: str
      returned: when the service reports it
      sample: [elf, kdump-zlib]
    features:
      description: Optional API features of the service.
      type: list
      elements: str
      returned: when the service reports it
      sample: [wait, label, request_id, file, delete]
    auth:
      description: Whether the service requires a bearer token.
      type: bool
      returned: when the service reports it
      sample: false
'''

from ansible_collections.vmforensics.memdump.plugins.module_utils._client import (
    STATES,
    MemdumpConnectionError,
    MemdumpError,
    MemdumpHTTPError,
    MemdumpTLSError,
)
from ansible_collections.vmforensics.memdump.plugins.module_utils._module import MemdumpModule, generate_argspec
from ansible_collections.vmforensics.memdump.plugins.module_utils._vms import failure_reasons, host_vms


def service_health(client):
    try:
        health = dict(client.health())
    except (MemdumpConnectionError, MemdumpTLSError) as e:
        return {'status': 'unavailable', 'url': client.url, 'error': e.msg}
    except MemdumpHTTPError as e:
        if e.status == 404:  # a service with only the core API
            return {'status': 'unknown', 'url': client.url, 'error': e.msg}
        return {'status': 'unavailable', 'url': client.url, 'error': e.msg}
    health['url'] = client.url
    health.setdefault('status', 'ok')
    return health


def unavailable_reason(service):
    """Why the service is unavailable, for the warning or the failure."""
    libvirt = service.get('libvirt')
    if 'error' not in service and isinstance(libvirt, dict):
        return 'it can not reach libvirt: %s' % (libvirt.get('error') or 'not connected')
    return service.get('error') or 'no reason given'


def run(module):
    params = module.params
    client = module.client
    service = service_health(client)
    dumps = []
    if service['status'] != 'unavailable' or 'libvirt' in service:
        # A service that cannot reach libvirt still knows its dumps.
        try:
            dumps = client.list_all_dumps(vms=params['vms'], label=params['label'], state=params['state'],
                                          dump_ids=params['dump_ids'])
        except MemdumpConnectionError as e:
            service = {'status': 'unavailable', 'url': client.url, 'error': e.msg}
        else:
            if service['status'] == 'unknown':
                service['status'] = 'ok'
    if service['status'] == 'unavailable':
        msg = 'the memdump service at %s is unavailable: %s' % (client.url, unavailable_reason(service))
        if params['fail_on_unavailable']:
            module.fail_json(msg=msg, service=service, dumps=dumps)
        module.warn(msg)
    # A service with only the core API may ignore some filters: apply them again.
    checks = [('vm', params['vms']), ('dump_id', params['dump_ids']),
              ('label', [params['label']] if params['label'] else None),
              ('state', [params['state']] if params['state'] else None)]
    for key, allowed in checks:
        if allowed:
            dumps = [d for d in dumps if key not in d or d[key] in allowed]
    if any(d.get('state') == 'failed' for d in dumps):
        reasons = failure_reasons(client, dumps)
        dumps = [dict(d, reason=reasons.get(d.get('dump_id'))) if d.get('state') == 'failed' else d for d in dumps]
    vms = {}
    for record in dumps:
        vms.setdefault(record.get('vm'), []).append(record.get('dump_id'))
    result = dict(changed=False, dumps=dumps, vms=vms, service=service)
    if params['list_vms']:
        try:
            result['host_vms'] = host_vms(client)
        except MemdumpError as e:
            module.fail_json(msg='cannot say which VMs the host of the memdump service at %s runs: %s' % (client.url, e.msg), **result)
    module.exit_json(**result)


def main():
    argument_spec = generate_argspec(
        vms=dict(type='list', elements='str', aliases=['vm_ids']),
        dump_ids=dict(type='list', elements='str'),
        label=dict(type='str'),
        state=dict(type='str', choices=list(STATES)),
        list_vms=dict(type='bool', default=False),
        fail_on_unavailable=dict(type='bool', default=False),
    )
    module = MemdumpModule(argument_spec=argument_spec, supports_check_mode=True)
    module.run(run)


if __name__ == '__main__':
    main()
