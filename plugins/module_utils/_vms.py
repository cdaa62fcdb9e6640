# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The VMs a host runs, as its memdump service lists them (``GET /api/vms``), and why a dump failed.

For internal collection use only: this is not a public API and may change without notice.

The reason a dump failed is decided here and nowhere else: the service's own ``reason`` when its
record carries one, else what its VM listing says (no such VM, a VM that is not running). Roles and
playbooks select on the reason; no caller matches the service's message text.
"""

from __future__ import annotations

from ansible.module_utils.common.text.converters import to_text

from ansible_collections.vmforensics.memdump.plugins.module_utils._client import MemdumpError, MemdumpHTTPError

# Why a dump failed. The first two fail again the same way on a re-run; the last one may not.
NO_SUCH_VM = 'no_such_vm'
NOT_RUNNING = 'not_running'
FAILED = 'failed'
REASONS = (NO_SUCH_VM, NOT_RUNNING, FAILED)


class VmListingUnavailable(MemdumpError):
    """The service does not list its VMs (an older service): only per-host VM lists work with it."""


def host_vms(client):
    """``GET /api/vms``: the host's libvirt domains as ``[{name, state, uuid, active}]``, checked.

    Raises :class:`VmListingUnavailable` for a service without the route, a :class:`MemdumpError` for
    any other failure or an answer of the wrong shape (the service is not trusted blindly).
    """
    try:
        dummy, answer = client.request('GET', '/api/vms')
    except MemdumpHTTPError as e:
        if e.status in (404, 405):
            raise VmListingUnavailable(
                'the memdump service at %s does not list its VMs (GET /api/vms answered HTTP %s: an older service), so '
                'it cannot say whether it runs a VM of a fleet-wide list; update the service, or give the VMs per host '
                '(vms: {host: [vm, ...]} or the host variable memdump_vms)' % (client.url, e.status),
                url=e.url, status=e.status, detail=e.detail)
        raise
    vms = answer.get('vms') if isinstance(answer, dict) else None
    if not isinstance(vms, list) or not all(isinstance(vm, dict) and isinstance(vm.get('name'), str) and vm['name'] for vm in vms):
        raise MemdumpError('the memdump service at %s answered GET /api/vms with something that is not a list of VMs: %s'
                           % (client.url, to_text(answer)[:300]), url=client.url)
    return [{'name': vm['name'], 'state': to_text(vm.get('state') or 'unknown'), 'uuid': vm.get('uuid'),
             'active': vm.get('active') is True} for vm in vms]


def failure_reasons(client, records):
    """``{dump_id: reason}`` for the failed ``records`` (one of :data:`REASONS`).

    The service's own ``reason`` wins when it gives one of ours; otherwise the host's VM listing decides,
    asked once and only when a dump failed. A service that cannot list its VMs leaves them :data:`FAILED`.
    """
    failed = [r for r in records if isinstance(r, dict) and r.get('state') == 'failed']
    reasons = dict((r.get('dump_id'), r['reason']) for r in failed if r.get('reason') in REASONS)
    undecided = [r for r in failed if r.get('dump_id') not in reasons]
    if not undecided:
        return reasons
    try:
        listed = dict((vm['name'], vm) for vm in host_vms(client))
    except MemdumpError:
        listed = None  # the reason stays unknown; the dump's own message still says what happened
    for record in undecided:
        vm = listed.get(record.get('vm')) if listed is not None else None
        if listed is not None and vm is None:
            reasons[record.get('dump_id')] = NO_SUCH_VM
        elif vm is not None and not vm['active']:
            reasons[record.get('dump_id')] = NOT_RUNNING
        else:
            reasons[record.get('dump_id')] = FAILED
    return reasons
