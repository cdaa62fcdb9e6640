# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The one place that says why a dump failed. The service's own answers are tested against the real
service (tests/integration/test_modules.py); this covers a service without error codes, played by
``OlderService`` (a stand-in of our own service's HTTP answers, named as such)."""

from __future__ import annotations

import pytest

from ansible_collections.vmforensics.memdump.plugins.module_utils._client import MemdumpError, MemdumpHTTPError
from ansible_collections.vmforensics.memdump.plugins.module_utils._vms import (
    FAILED, NO_SUCH_VM, NOT_RUNNING, VmListingUnavailable, failure_reasons, host_vms)


class OlderService(object):
    """Answers GET /api/vms with ``listing`` (an exception is raised); counts the requests."""

    url = 'http://127.0.0.1:5001'

    def __init__(self, listing):
        self.listing = listing
        self.requests = 0

    def request(self, method, path):
        assert (method, path) == ('GET', '/api/vms')
        self.requests += 1
        if isinstance(self.listing, Exception):
            raise self.listing
        return 200, self.listing


def failed(dump_id, vm, **extra):
    return dict(dump_id=dump_id, vm=vm, state='failed', message='whatever the words', **extra)


def test_the_services_error_code_is_used_and_the_listing_not_asked():
    svc = OlderService(AssertionError('not asked'))
    records = [failed('a', 'web01', error_code='no_such_vm'), failed('b', 'db01', error_code='insufficient_space'),
               dict(dump_id='c', vm='app01', state='completed')]
    assert failure_reasons(svc, records) == {'a': NO_SUCH_VM, 'b': 'insufficient_space'}
    assert svc.requests == 0


def test_without_error_codes_the_listing_decides_once():
    svc = OlderService({'vms': [{'name': 'web01', 'state': 'running', 'active': True},
                                {'name': 'old01', 'state': 'shut off', 'active': False}]})
    records = [failed('a', 'web01'), failed('b', 'old01'), failed('c', 'typo01'), failed('d', 'x', error_code='Bad Code!')]
    assert failure_reasons(svc, records) == {'a': FAILED, 'b': NOT_RUNNING, 'c': NO_SUCH_VM, 'd': NO_SUCH_VM}
    assert svc.requests == 1


def test_a_service_that_cannot_list_leaves_the_reason_unknown():
    svc = OlderService(MemdumpHTTPError('GET /api/vms failed with HTTP 404', status=404))
    assert failure_reasons(svc, [failed('a', 'typo01')]) == {'a': FAILED}


def test_listing_without_the_route_says_to_update_or_name_vms_per_host():
    with pytest.raises(VmListingUnavailable, match=r'does not list its VMs .*HTTP 404.*per host'):
        host_vms(OlderService(MemdumpHTTPError('GET /api/vms failed with HTTP 404', status=404)))


@pytest.mark.parametrize('answer', [[], {'vms': 'web01'}, {'vms': [{'name': ''}]}, {'vms': [{'state': 'running'}]}, None])
def test_a_listing_of_the_wrong_shape_is_refused(answer):
    with pytest.raises(MemdumpError, match='not a list of VMs'):
        host_vms(OlderService(answer))
