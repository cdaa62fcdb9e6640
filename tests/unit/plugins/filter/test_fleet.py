# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.vmforensics.memdump.plugins.filter.fleet import fleet_plan


def vm(name, active=True, uuid=None):
    return {'name': name, 'state': 'running' if active else 'shut off', 'uuid': uuid or 'uuid-' + name, 'active': active}


def test_each_host_acquires_the_vms_it_runs():
    plan = fleet_plan(['web01', 'db01', 'app01'], {'hv01': [vm('web01'), vm('other')], 'hv02': [vm('db01'), vm('app01')]})
    assert plan['hosts'] == {'hv01': ['web01'], 'hv02': ['db01', 'app01']}
    assert plan['found'] == {'web01': 'hv01', 'db01': 'hv02', 'app01': 'hv02'}
    assert plan['missing'] == [] and plan['ambiguous'] == {} and plan['message'] is None


def test_a_vm_on_no_host_is_named_with_the_hosts_asked_and_those_not_asked():
    plan = fleet_plan(['web01', 'web09'], {'hv01': [vm('web01')], 'hv02': [], 'hv03': None}, ['hv04'])
    assert plan['missing'] == ['web09'] and plan['hosts'] == {'hv01': ['web01'], 'hv02': []}
    assert plan['not_asked'] == ['hv03', 'hv04']
    assert 'web09: found on no host of the play (asked: hv01, hv02; not asked' in plan['message']
    assert 'hv03, hv04' in plan['message']


def test_a_vm_running_on_two_hosts_is_acquired_on_neither_and_reported():
    plan = fleet_plan(['web01', 'db01'], {'hv01': [vm('web01', uuid='u-1'), vm('db01')], 'hv02': [vm('web01', uuid='u-2')]})
    assert plan['hosts'] == {'hv01': ['db01'], 'hv02': []}
    assert [h['host'] for h in plan['ambiguous']['web01']] == ['hv01', 'hv02']
    assert 'web01: on 2 hosts, hv01 (running, uuid u-1), hv02 (running, uuid u-2): not acquired' in plan['message']
    assert '{"vms": {"hv01": ["web01"]}}' in plan['message']


def test_the_running_copy_wins_over_a_defined_one_and_a_stopped_vm_stays_on_its_host():
    plan = fleet_plan(['web01', 'old01'], {'hv01': [vm('web01', active=False)], 'hv02': [vm('web01'), vm('old01', active=False)]})
    assert plan['hosts'] == {'hv01': [], 'hv02': ['web01', 'old01']} and plan['message'] is None


def test_duplicates_and_empty_names_are_dropped():
    assert fleet_plan(['web01', 'web01', ''], {'hv01': [vm('web01')]})['hosts'] == {'hv01': ['web01']}


@pytest.mark.parametrize('wanted, listings, words', [
    ('web01', {}, 'list of names'),
    ([1], {}, 'list of names'),
    (['web01'], [], 'map each host'),
    (['web01'], {'hv01': 'web01'}, 'VMs of host hv01'),
])
def test_bad_input_is_a_clear_error(wanted, listings, words):
    with pytest.raises(AnsibleFilterError, match=words):
        fleet_plan(wanted, listings)
