# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of memdump_records: argument handling, InfluxQL building, dedup and stats."""

from __future__ import annotations

import json

import pytest

from ansible.module_utils.testing import patch_module_args

from ansible_collections.vmforensics.memdump.plugins.module_utils import _influxdb
from ansible_collections.vmforensics.memdump.plugins.modules import memdump_records


def run_main(capsys, args):
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            memdump_records.main()
    return json.loads(capsys.readouterr().out)


COLUMNS = ['time', 'dump_id', 'duration_sec', 'format', 'host', 'label', 'message', 'sha256', 'size_bytes', 'state', 'vm']
VALUES = [
    ['2026-11-25T22:50:05Z', 'b' * 32, None, 'elf', 'hv01', 'IR-1', 'boom', None, None, 'failed', 'db01'],
    ['2026-11-25T22:50:03Z', 'a' * 32, 2.0, 'elf', 'hv01', 'IR-1', 'done', 'f' * 64, 100, 'completed', 'web01'],
    ['2026-11-25T22:50:02Z', 'c' * 32, 4.0, 'elf', 'hv02', 'IR-1', 'done', 'e' * 64, 50, 'completed', 'app01'],
    ['2026-11-25T22:50:01Z', 'a' * 32, None, 'elf', 'hv01', 'IR-1', 'running', None, None, 'running', 'web01'],
]
ROWS = {'results': [{'series': [{'name': 'memdump', 'columns': COLUMNS, 'values': VALUES}]}]}


@pytest.fixture
def fake_query(monkeypatch):
    calls = []

    def query(self, q, method='GET', epoch=None):
        calls.append((self, q))
        return ROWS['results']

    monkeypatch.setattr(_influxdb.InfluxDBv1, 'query', query)
    return calls


def test_query_building_quotes_every_value():
    q = memdump_records.build_query('memdump', vms=["web01", "x' OR 1=1"], hosts=['hv"1'], label='IR-1',
                                    since='7d', until='2026-11-26T00:00:00Z')
    assert q == ('SELECT * FROM "memdump" WHERE time >= now() - 7d AND time < \'2026-11-26T00:00:00Z\' AND '
                 '("vm" = \'web01\' OR "vm" = \'x\\\' OR 1=1\') AND ("host" = \'hv"1\') AND "label" = \'IR-1\' '
                 'ORDER BY time DESC')


@pytest.mark.parametrize('value, expected', [
    ('12h', 'now() - 12h'), ('now()', 'now()'), ('now() - 30m', 'now() - 30m'),
    ('2026-11-25', "'2026-11-25T00:00:00Z'"), ('2026-11-25T08:00', "'2026-11-25T08:00:00Z'"),
    ('2026-11-25T08:00:00.5+02:00', "'2026-11-25T08:00:00.5+02:00'"),
])
def test_time_expressions(value, expected):
    assert memdump_records.time_expression(value, 'since') == expected


@pytest.mark.parametrize('value', ['yesterday', "1d'; DROP DATABASE x", '7 days', '2026-13'])
def test_bad_times_fail_clearly(capsys, fake_query, value):
    out = run_main(capsys, {'since': value})
    assert out['failed'] and 'since=' in out['msg'] and '7d' in out['msg']
    assert fake_query == []


def test_records_deduplicated_and_stats(capsys, fake_query):
    out = run_main(capsys, {'url': 'http://127.0.0.1:1', 'database': 'db1', 'label': 'IR-1'})
    assert out['changed'] is False
    assert [r['dump_id'] for r in out['records']] == ['b' * 32, 'a' * 32, 'c' * 32]
    assert out['records'][1]['state'] == 'completed' and out['records'][1]['size_bytes'] == 100
    assert out['stats'] == {'count': 3, 'states': {'failed': 1, 'completed': 2}, 'total_bytes': 150,
                            'mean_duration_sec': 3.0, 'max_duration_sec': 4.0}
    client = fake_query[0][0]
    assert client.url == 'http://127.0.0.1:1' and client.database == 'db1'


def test_request_timeout_option_and_env(capsys, fake_query, monkeypatch):
    run_main(capsys, {'request_timeout': 2.5})
    assert fake_query[0][0].timeout == 2.5
    monkeypatch.setenv('MEMDUMP_INFLUXDB_TIMEOUT', '7')  # the callback's timeout setting
    run_main(capsys, {})
    assert fake_query[1][0].timeout == 7


def test_state_filter_applies_to_newest_state_and_limit_keeps_stats(capsys, fake_query):
    out = run_main(capsys, {'state': ['running']})
    assert out['records'] == [] and out['stats']['count'] == 0
    out = run_main(capsys, {'state': ['completed'], 'limit': 1})
    assert len(out['records']) == 1 and out['stats']['count'] == 2


def test_state_choices_and_limit_validated(capsys, fake_query):
    out = run_main(capsys, {'state': ['done']})
    assert out['failed'] and 'state' in out['msg']
    out = run_main(capsys, {'limit': -1})
    assert out['failed'] and 'limit' in out['msg']


def test_env_fallbacks_and_password_not_returned(capsys, fake_query, monkeypatch):
    monkeypatch.setenv('MEMDUMP_INFLUXDB_URL', 'http://influx.example:8086')
    monkeypatch.setenv('MEMDUMP_INFLUXDB_DATABASE', 'fromenv')
    monkeypatch.setenv('MEMDUMP_INFLUXDB_USERNAME', 'u1')
    monkeypatch.setenv('MEMDUMP_INFLUXDB_PASSWORD', 'pw-from-env')
    out = run_main(capsys, {})
    client = fake_query[0][0]
    assert (client.url, client.database, client.username, client.password) == (
        'http://influx.example:8086', 'fromenv', 'u1', 'pw-from-env')
    assert 'pw-from-env' not in json.dumps(out)


def test_v2_queries_bucket_with_token(capsys, fake_query):
    run_main(capsys, {'org': 'o', 'bucket': 'forensics', 'token': 't0k'})
    client = fake_query[0][0]
    assert client.database == 'forensics' and client.token == 't0k' and client.username is None


def test_influxdb_error_fails_with_query(capsys, monkeypatch):
    def query(self, q, method='GET', epoch=None):
        raise _influxdb.InfluxDBError('InfluxDB GET http://x/query answered HTTP 401: authorization failed')
    monkeypatch.setattr(_influxdb.InfluxDBv1, 'query', query)
    out = run_main(capsys, {})
    assert out['failed'] and 'HTTP 401' in out['msg'] and out['query'].startswith('SELECT')


def test_safe_url_strips_credentials():
    assert _influxdb.safe_url('https://u:p@h:8086/x?u=a&p=b') == 'https://h:8086/x'


def test_nothing_found_says_that_only_runs_with_the_callback_are_recorded(capsys, monkeypatch):
    monkeypatch.setattr(_influxdb.InfluxDBv1, 'query', lambda self, q, method='GET', epoch=None: [{}])
    result = run_main(capsys, {'url': 'http://127.0.0.1:8086', 'database': 'memdump', 'label': 'IR-QUIET'})
    assert result['records'] == []
    assert 'vmforensics.memdump.influxdb' in result['msg'] and "'memdump'" in result['msg']


def test_records_found_carry_no_message(capsys, fake_query):
    result = run_main(capsys, {'url': 'http://127.0.0.1:8086', 'database': 'memdump', 'label': 'IR-1'})
    assert result['records'] and result['msg'] is None


def test_a_missing_database_says_how_to_create_it(capsys, monkeypatch):
    def query(self, q, method='GET', epoch=None):
        raise _influxdb.InfluxDBError('InfluxDB query failed: database not found: memdump')
    monkeypatch.setattr(_influxdb.InfluxDBv1, 'query', query)
    result = run_main(capsys, {'url': 'http://127.0.0.1:8086', 'database': 'memdump'})
    assert result['failed'] is True
    assert 'CREATE DATABASE memdump' in result['msg'] and 'vmforensics.memdump.influxdb' in result['msg']
