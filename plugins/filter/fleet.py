# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Filter ``fleet_plan``: which host acquires which VM of one list given for a whole fleet (docs: fleet_plan.yml)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_text


def _names(value, what):
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise AnsibleFilterError('fleet_plan: %s must be a list of names, got %r' % (what, value))
    seen = []
    for name in value:
        if name and name not in seen:
            seen.append(to_text(name))
    return seen


def _where(hosts):
    return ', '.join('%s (%s%s)' % (h['host'], h['state'], ', uuid %s' % h['uuid'] if h.get('uuid') else '') for h in hosts)


def fleet_plan(wanted, listings, not_asked=None):
    """Decide, from each host's VM listing, where each wanted VM is acquired.

    ``listings`` maps each host asked to its service's VMs (``host_vms`` of memdump_info with list_vms);
    a host mapped to None was not asked. A VM is acquired on the hosts where it runs; if it runs
    nowhere, on the host that has it defined (its dump then fails with the service's reason). A VM that
    two or more hosts would acquire is acquired on none: the same name on two hypervisors is either a
    migration in progress or two different guests, and a memory-only dump pauses its guest, so a
    responder chooses the host (per-host mapping) rather than the play pausing a guest nobody named.
    """
    wanted = _names(wanted, 'the VMs')
    if not isinstance(listings, dict):
        raise AnsibleFilterError('fleet_plan: the listings must map each host to its VMs, got %r' % (listings,))
    not_asked = _names(list(not_asked or []), 'the hosts not asked')
    on = {}  # VM name -> [{host, state, uuid, active}]
    hosts = {}
    for host in sorted(listings):
        vms = listings[host]
        if vms is None:
            if host not in not_asked:
                not_asked.append(host)
            continue
        hosts[host] = []
        if not isinstance(vms, list):
            raise AnsibleFilterError('fleet_plan: the VMs of host %s must be a list, got %r' % (host, vms))
        for vm in vms:
            if isinstance(vm, dict) and vm.get('name') in wanted:
                on.setdefault(vm['name'], []).append(dict(host=host, state=vm.get('state') or 'unknown', uuid=vm.get('uuid'),
                                                          active=vm.get('active') is True))
    missing, ambiguous, found = [], {}, {}
    for vm in wanted:
        candidates = [h for h in on.get(vm, []) if h['active']] or on.get(vm, [])
        if not candidates:
            missing.append(vm)
        elif len(candidates) > 1:
            ambiguous[vm] = candidates
        else:
            found[vm] = candidates[0]['host']
            hosts[candidates[0]['host']].append(vm)

    text = []
    if missing:
        text.append('%s: found on no host of the play (asked: %s%s). Check the name against the VMs the hosts run, or give '
                    'the VM per host (vms: {host: [vm]}).' % (
                        ', '.join(missing), ', '.join(sorted(hosts)) or 'none',
                        '; not asked, as they failed or were unreachable before: %s' % ', '.join(sorted(not_asked)) if not_asked else ''))
    for vm in sorted(ambiguous):
        text.append('%s: on %d hosts, %s: not acquired on any of them, since the name does not say which guest is meant. '
                    'Name the host with the per-host mapping, for example -e \'{"vms": {"%s": ["%s"]}}\'.' % (
                        vm, len(ambiguous[vm]), _where(ambiguous[vm]), ambiguous[vm][0]['host'], vm))
    return dict(hosts=hosts, found=found, missing=missing, ambiguous=ambiguous, not_asked=sorted(not_asked),
                message=' '.join(text) if text else None)


class FilterModule(object):

    def filters(self):
        return {'fleet_plan': fleet_plan}
