# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Custody witnesses: where the chain head of an incident's log is recorded outside the controller's
evidence directory, so that a cut or rewritten log can be detected.

* the service: ``POST /api/dumps/{id}/collected`` carries ``custody_head`` ``{label, seq, hash}``; the
  service keeps an append-only list ``custody_heads`` in the dump's record;
* InfluxDB: the callback writes each action plugin's ``custody_head`` as measurement
  ``memdump_custody`` (tags ``label``, ``host``; fields ``seq``, ``hash``).

For internal collection use only: this is not a public API and may change without notice.
"""

from __future__ import annotations

from ansible_collections.vmforensics.memdump.plugins.module_utils._client import MemdumpError
from ansible_collections.vmforensics.memdump.plugins.module_utils._influxdb import (
    InfluxDBError, InfluxDBv1, quote_ident, quote_string, safe_url, series_rows)
from ansible_collections.vmforensics.memdump.plugins.plugin_utils._service_rules import service_info

MEASUREMENT = 'memdump_custody'


def service_heads(client, label):
    """``(heads, status)``: the heads the service keeps for the label's dumps, and a dict saying what
    was asked and whether it answered (``reached``, ``heads``, ``note``)."""
    status = {'witness': 'service', 'url': client.url, 'reached': False, 'heads': 0, 'note': None}
    heads = []
    try:
        info = service_info(client)
        if not info.keeps_custody_heads:
            status.update(reached=True, note='the service does not keep custody heads (an older version): not a '
                                             'witness')
            return heads, status
        for listed in client.list_all_dumps(label=label):
            dump_id = listed.get('dump_id') if isinstance(listed, dict) else None
            if not dump_id:
                continue
            record = listed if 'custody_heads' in listed else client.get_dump(dump_id)
            for head in record.get('custody_heads') or []:
                if isinstance(head, dict):
                    heads.append(dict(head, source='the service at %s (dump %s, client %s)'
                                      % (client.url, dump_id, head.get('client'))))
    except MemdumpError as e:
        status['note'] = str(e)
        return [], status
    status.update(reached=True, heads=len(heads))
    return heads, status


def influxdb_heads(options, label):
    """``(heads, status)`` from InfluxDB's ``memdump_custody`` measurement (1.x query API, also the v1
    compatibility API of InfluxDB 2.x with a token)."""
    status = {'witness': 'influxdb', 'url': safe_url(options.get('url')), 'reached': False, 'heads': 0, 'note': None}
    try:
        db = InfluxDBv1(options.get('url'), options.get('database') or options.get('bucket'),
                        retention_policy=options.get('retention_policy'), username=options.get('username'),
                        password=options.get('password'), timeout=options.get('request_timeout') or 5,
                        validate_certs=options.get('validate_certs', True), ca_path=options.get('ca_path'),
                        token=options.get('token'))
        rows = series_rows(db.query('SELECT "seq", "hash", "host" FROM %s WHERE "label" = %s'
                                    % (quote_ident(MEASUREMENT), quote_string(label))))
    except InfluxDBError as e:
        status['note'] = str(e)
        return [], status
    heads = []
    for row in rows:
        seq = row.get('seq')
        if isinstance(seq, float) and seq.is_integer():
            seq = int(seq)
        heads.append({'label': label, 'seq': seq, 'hash': row.get('hash'), 'at': row.get('time'),
                      'source': 'InfluxDB at %s (host %s)' % (status['url'], row.get('host'))})
    status.update(reached=True, heads=len(heads))
    return heads, status
