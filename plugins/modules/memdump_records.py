#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: memdump_records
short_description: Dump history and statistics of the whole fleet, from InfluxDB
version_added: 0.1.0
description:
  - Reads the dump records that the P(vmforensics.memdump.influxdb#callback) callback wrote to InfluxDB,
    with InfluxQL through the C(/query) API, and computes statistics over them.
  - Each dump is returned once, as its newest point (a dump seen C(running) in one run and C(completed)
    in a later one is returned C(completed)). O(state) applies to that newest state.
  - Runs where InfluxDB is reachable; usually on the controller (C(delegate_to=localhost), C(run_once=true)).
  - Uses the same connection options, and environment variables, as the callback, except that the
    callback's O(vmforensics.memdump.influxdb#callback:timeout) is O(request_timeout) here (the limit of
    each request, as in every module of the collection).
  - Read-only. With O(api=v2) the query goes to the v1 compatibility C(/query) API with the token.
author:
  - vmforensics maintainers (@vmforensics)
extends_documentation_fragment:
  - vmforensics.memdump.influxdb
  - vmforensics.memdump.attributes
attributes:
  check_mode:
    support: full
    details:
      - Only reads; the result is the same as without check mode.
  diff_mode:
    support: none
  idempotent:
    support: full
  action_group:
    description: Use C(group/vmforensics.memdump.influxdb) in C(module_defaults) to set the InfluxDB options once.
    support: full
    membership:
      - vmforensics.memdump.influxdb
options:
  vms:
    description:
      - Only dumps of these VMs (libvirt domain names).
    type: list
    elements: str
  hosts:
    description:
      - Only dumps recorded for these inventory hosts (the C(host) tag).
    type: list
    elements: str
  label:
    description:
      - Only dumps with this incident label.
    type: str
  state:
    description:
      - Only dumps whose newest state is one of these.
    type: list
    elements: str
    choices: [queued, running, completed, failed]
  since:
    description:
      - Only points at or after this time.
      - An ISO 8601 time (V(2026-11-25T08:00:00Z), V(2026-11-25)) or an age such as V(7d), V(12h), V(30m).
    type: str
  until:
    description:
      - Only points before this time; same forms as O(since).
    type: str
  limit:
    description:
      - At most this many records are returned, newest first. RV(stats) always covers every matching dump.
    type: int
    default: 100
seealso:
  - plugin: vmforensics.memdump.influxdb
    plugin_type: callback
'''

EXAMPLES = r'''
- name: Fleet statistics of the last week
  vmforensics.memdump.memdump_records:
    url: http://influxdb.example.com:8086
    database: forensics
    since: 7d
  delegate_to: localhost
  run_once: true
  register: history

- name: All dumps of an incident, with their hashes
  vmforensics.memdump.memdump_records:
    label: IR-2026-042
    limit: 1000
  delegate_to: localhost
  run_once: true
  register: incident

- name: Set the InfluxDB connection once for every records task
  module_defaults:
    group/vmforensics.memdump.influxdb:
      url: https://influxdb.example.com:8086
      database: forensics
      username: ansible
      password: "{{ vault_influxdb_password }}"
  block:
    - name: Failed dumps of web01
      vmforensics.memdump.memdump_records:
        vms: [web01]
        state: [failed]
      delegate_to: localhost
      run_once: true
'''

RETURN = r'''
records:
  description: The matching dumps, newest first, at most O(limit).
  returned: success
  type: list
  elements: dict
  contains:
    time:
      description: Timestamp of the point (the dump's C(finished_at), or its start while unfinished).
      type: str
      sample: '2026-11-25T22:50:03.123456Z'
    host:
      description: Inventory host of the task that reported the dump.
      type: str
      sample: hv01
    vm:
      description: Libvirt domain name.
      type: str
      sample: web01
    state:
      description: V(queued), V(running), V(completed) or V(failed).
      type: str
      sample: completed
    method:
      description: V(memory-only) or V(live), if the service reported it.
      type: str
      sample: live
    format:
      description: Dump format.
      type: str
      sample: elf
    label:
      description: Incident label, if any.
      type: str
      sample: IR-2026-042
    dump_id:
      description: The service's dump id.
      type: str
      sample: 6f1c0e1d2b7a4f4fa0c7c1b1d0e9a8b7
    duration_sec:
      description: Seconds the dump took.
      type: float
      sample: 1.42
    size_bytes:
      description: Size of the image.
      type: int
      sample: 134480867
    sha256:
      description: SHA-256 of the image.
      type: str
      sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    dump_path:
      description: Path of the image on the service host.
      type: str
      sample: /var/lib/memdump/dumps/web01-6f1c0e1d.elf
    message:
      description: Status or failure reason.
      type: str
      sample: completed
    service_host:
      description: Name of the host the memdump service ran on.
      type: str
      sample: hv01.example.com
stats:
  description: Statistics over every matching dump (not only the returned O(limit)).
  returned: success
  type: dict
  contains:
    count:
      description: Number of matching dumps.
      type: int
      sample: 12
    states:
      description: Number of dumps per state.
      type: dict
      sample: {completed: 10, failed: 2}
    total_bytes:
      description: Sum of RV(records[].size_bytes) of the matching dumps.
      type: int
      sample: 1613770404
    mean_duration_sec:
      description: Mean of RV(records[].duration_sec) over the dumps that have one, or V(null).
      type: float
      sample: 1.7
    max_duration_sec:
      description: Largest RV(records[].duration_sec), or V(null).
      type: float
      sample: 3.2
query:
  description: The InfluxQL statement that was run.
  returned: success
  type: str
  sample: SELECT * FROM "memdump" WHERE time >= now() - 7d ORDER BY time DESC
msg:
  description:
    - When nothing matches, why that can be so (only runs with the callback enabled are recorded); V(null) otherwise.
  returned: success
  type: str
  sample: "no records match in database 'memdump' at http://influxdb:8086: records exist only for runs with the callback ..."
'''

import re
import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmforensics.memdump.plugins.module_utils._influxdb import (
    InfluxDBError,
    InfluxDBv1,
    influxdb_argument_spec,
    quote_ident,
    quote_string,
    resolve_api,
    safe_url,
    series_rows,
    url_password,
)

STATES = ['queued', 'running', 'completed', 'failed']
RECORD_KEYS = ('time', 'host', 'vm', 'state', 'method', 'format', 'label', 'dump_id', 'duration_sec', 'size_bytes', 'sha256',
               'dump_path', 'message', 'progress', 'paused_sec', 'service_host')
_AGE = re.compile(r'^(\d+)(ns|u|ms|s|m|h|d|w)$')
_NOW_MINUS = re.compile(r'^now\(\)(?:\s*-\s*(\d+(?:ns|u|ms|s|m|h|d|w)))?$')
_ISO = re.compile(r'^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)(Z|[+-]\d{2}:\d{2})?)?$')


def time_expression(value, name):
    """An InfluxQL time expression for since/until, or ValueError saying what is accepted."""
    value = (value or '').strip()
    match = _AGE.match(value)
    if match:
        return 'now() - %s' % value
    match = _NOW_MINUS.match(value)
    if match:
        return 'now() - %s' % match.group(1) if match.group(1) else 'now()'
    match = _ISO.match(value)
    if match:
        day, clock, zone = match.groups()
        if not clock:
            return quote_string(day + 'T00:00:00Z')
        if clock.count(':') == 1:
            clock += ':00'
        return quote_string('%sT%s%s' % (day, clock, zone or 'Z'))
    raise ValueError('%s=%r is not a time: use an ISO 8601 time such as 2026-11-25T08:00:00Z or 2026-11-25, '
                     'or an age such as 7d, 12h, 30m' % (name, value))


def build_query(measurement, vms=None, hosts=None, label=None, since=None, until=None):
    """The InfluxQL SELECT of every matching point, newest first (state is filtered after dedup)."""
    where = []
    if since:
        where.append('time >= %s' % time_expression(since, 'since'))
    if until:
        where.append('time < %s' % time_expression(until, 'until'))
    for tag, values in (('vm', vms), ('host', hosts)):
        if values:
            where.append('(%s)' % ' OR '.join('%s = %s' % (quote_ident(tag), quote_string(v)) for v in values))
    if label:
        where.append('%s = %s' % (quote_ident('label'), quote_string(label)))
    query = 'SELECT * FROM %s' % quote_ident(measurement)
    if where:
        query += ' WHERE ' + ' AND '.join(where)
    return query + ' ORDER BY time DESC'


def to_records(rows):
    """One record per dump id, its newest point first; rows must be newest first."""
    seen, records = set(), []
    for row in rows:
        dump_id = row.get('dump_id')
        if not dump_id or dump_id in seen:
            continue
        seen.add(dump_id)
        record = dict((k, row.get(k)) for k in RECORD_KEYS if row.get(k) not in (None, ''))
        if 'size_bytes' in record:
            record['size_bytes'] = int(record['size_bytes'])
        for key in ('duration_sec', 'progress', 'paused_sec'):
            if key in record:
                record[key] = float(record[key])
        records.append(record)
    return records


def compute_stats(records):
    states = {}
    for record in records:
        state = record.get('state') or 'unknown'
        states[state] = states.get(state, 0) + 1
    durations = [r['duration_sec'] for r in records if r.get('duration_sec') is not None]
    return dict(
        count=len(records),
        states=states,
        total_bytes=sum(r.get('size_bytes') or 0 for r in records),
        mean_duration_sec=round(sum(durations) / len(durations), 3) if durations else None,
        max_duration_sec=max(durations) if durations else None,
    )


def run(module):
    p = module.params
    if p['limit'] < 0:
        module.fail_json(msg='limit must be 0 or more, got %s' % p['limit'])
    try:
        query = build_query(p['measurement'], vms=p['vms'], hosts=p['hosts'], label=p['label'],
                            since=p['since'], until=p['until'])
    except ValueError as err:
        module.fail_json(msg=str(err))
    api = resolve_api(p['api'], bucket=p['bucket'], org=p['org'])
    database = p['bucket'] if api == 'v2' else p['database']
    client = InfluxDBv1(p['url'], database, retention_policy=p['retention_policy'], username=p['username'],
                        password=p['password'], timeout=p['request_timeout'], validate_certs=p['validate_certs'],
                        ca_path=p['ca_path'], token=p['token'] if api == 'v2' else None)
    try:
        rows = series_rows(client.query(query))
    except InfluxDBError as err:
        msg = str(err)
        if 'database not found' in msg:
            # The usual first run: nothing has ever been recorded, and the callback does not create databases.
            msg += ('; create it once (InfluxDB 1.x: influx -execute "CREATE DATABASE %s"), then enable the callback '
                    'vmforensics.memdump.influxdb for the acquisition runs (docs/influxdb.md)' % database)
        module.fail_json(msg=msg, query=query)
    records = to_records(rows)
    if p['state']:
        records = [r for r in records if r.get('state') in p['state']]
    stats = compute_stats(records)
    msg = None
    if not records:
        msg = ('no records match in %s %r at %s: records exist only for runs with the callback vmforensics.memdump.influxdb '
               'enabled (ANSIBLE_CALLBACKS_ENABLED=vmforensics.memdump.influxdb with MEMDUMP_INFLUXDB_URL and '
               'MEMDUMP_INFLUXDB_DATABASE); a run without it is not recorded here'
               % ('bucket' if api == 'v2' else 'database', database, safe_url(p['url'])))
    module.exit_json(changed=False, records=records[:p['limit']], stats=stats, query=query, msg=msg)


def main():
    argument_spec = influxdb_argument_spec()
    argument_spec.update(
        vms=dict(type='list', elements='str'),
        hosts=dict(type='list', elements='str'),
        label=dict(type='str'),
        state=dict(type='list', elements='str', choices=STATES),
        since=dict(type='str'),
        until=dict(type='str'),
        limit=dict(type='int', default=100),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    # A password written into the URL is as secret as O(password): mask it in every result, -vvv included.
    secret = url_password(module.params['url'])
    if secret:
        module.no_log_values.add(secret)
    try:
        run(module)
    except Exception as err:  # pylint: disable=broad-except
        module.fail_json(msg='memdump_records failed: %s' % err, exception=traceback.format_exc())


if __name__ == '__main__':
    main()
