# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""One definition of each connection option set, accepted by every member of the action group; the
controller-side endpoint and its fallbacks; rules asked of the service, not copied."""

from __future__ import annotations

import hashlib
import os

import pytest

from ansible_collections.vmforensics.memdump.plugins.action import memdump_collect, memdump_delete
from ansible_collections.vmforensics.memdump.plugins.module_utils import _connection_options as options
from ansible_collections.vmforensics.memdump.plugins.modules import memdump_info, memdump_trigger, memdump_wait

DUMP_ID = 'c' * 32
BODY = b'image bytes'
RECORD = {'dump_id': DUMP_ID, 'vm': 'web01', 'state': 'completed', 'sha256': hashlib.sha256(BODY).hexdigest(),
          'size_bytes': len(BODY), 'format': 'live', 'host': 'kvm01'}


def module_argspec(module, monkeypatch):
    """The argument spec a module's main() builds (captured at the AnsibleModule call)."""
    seen = {}

    class Stop(Exception):
        pass

    def capture(*args, **kwargs):
        seen.update(kwargs.get('argument_spec') or args[0])
        raise Stop()
    monkeypatch.setattr(module, 'MemdumpModule', capture)
    with pytest.raises(Stop):
        module.main()
    return seen


@pytest.mark.parametrize('module', [memdump_info, memdump_trigger, memdump_wait])
def test_every_module_of_the_group_takes_the_host_side_options(module, monkeypatch):
    spec = module_argspec(module, monkeypatch)
    for name, definition in options.HOST_OPTIONS.items():
        assert spec[name] == definition, name


@pytest.mark.parametrize('plugin', [memdump_collect.ActionModule, memdump_delete.ActionModule])
def test_every_action_plugin_of_the_group_takes_the_host_side_options(plugin):
    for name, definition in options.HOST_OPTIONS.items():
        assert plugin.ARGSPEC[name] == definition, name


def test_collect_endpoint_fallbacks():
    base = {'url': 'http://hv:5001', 'token': 't', 'collect_token': None, 'collect_url': None}
    assert options.collect_connection(base, on_controller=True)['url'] == 'http://hv:5001'
    with pytest.raises(options.ConnectionOptionsError, match='set collect_url'):
        options.collect_connection(base, on_controller=False)
    got = options.collect_connection(dict(base, collect_url='https://hv.example:5001', collect_token='ct'), False)
    assert got['url'] == 'https://hv.example:5001' and got['token'] == 'ct'
    assert options.collect_connection(dict(base, collect_url='https://x'), False)['token'] == 't'


def test_group_defaults_leave_the_download_on_collect_url(run_action, tmp_path, scripted_service, monkeypatch):
    """module_defaults for the group set url (the hypervisor's loopback); the download uses collect_url."""
    health = {'features': ['collected', 'custody_heads'],
              'rules': {'label': {'pattern': '^[A-Z0-9-]+$'}, 'formats': {'elf': 'elf', 'live': 'qevm'}}}
    svc = scripted_service(RECORD, BODY, health)
    monkeypatch.setenv('MEMDUMP_COLLECT_URL', svc.url)
    monkeypatch.setenv('MEMDUMP_SERVICE_TOKEN', 'from-env')
    args = {'url': 'http://127.0.0.1:1', 'request_timeout': 1, 'evidence_dir': str(tmp_path), 'label': 'IR-1',
            'vm': 'web01', 'dump_id': DUMP_ID, 'host': 'hv01'}
    res = run_action(memdump_collect.ActionModule, args, connection='ssh')
    assert not res.get('failed'), res
    # The extension is the one the service published for the format; the head went to the service.
    assert res['evidence_file'] == 'hv01/web01_%s.qevm' % DUMP_ID and res['rules_published']
    assert open(os.path.join(str(tmp_path), 'IR-1', res['evidence_file']), 'rb').read() == BODY
    posted = [body for method, path, body in svc.requests if method == 'POST']
    assert posted == [{'sha256': RECORD['sha256'], 'custody_head': res['custody_head']}]
    assert res['witnessed_by_service'] and res['custody_head']['seq'] == 2
    # The label rule is the published one.
    res = run_action(memdump_collect.ActionModule, dict(args, label='ir-lower'), connection='ssh')
    assert res['failed'] and "label 'ir-lower' is refused: it must match ^[A-Z0-9-]+$" in res['msg']


def test_an_older_service_gets_its_documented_defaults_and_no_head(run_action, tmp_path, scripted_service):
    svc = scripted_service(dict(RECORD, format='kdump-zlib'), BODY, {'features': ['collected']})
    args = {'collect_url': svc.url, 'evidence_dir': str(tmp_path), 'label': 'IR-1', 'vm': 'web01', 'dump_id': DUMP_ID}
    res = run_action(memdump_collect.ActionModule, args, connection='ssh')
    assert not res.get('failed'), res
    assert res['evidence_file'].endswith('.kdump') and not res['rules_published'] and not res['witnessed_by_service']
    assert [body for method, path, body in svc.requests if method == 'POST'] == [{'sha256': RECORD['sha256']}]
    assert any('does not publish its rules' in w for w in res['warnings'])
    assert any('does not keep custody heads' in w for w in res['warnings'])
