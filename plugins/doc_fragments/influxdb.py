# -*- coding: utf-8 -*-
# Copyright: contributors to the vmforensics.memdump collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""InfluxDB connection options shared by the ``influxdb`` callback and the ``memdump_records`` module.

One table, two renderings: modules document environment variables in the description (the
argument spec in ``module_utils/_influxdb.py`` reads them with ``env_fallback``; the module's
``request_timeout`` is the callback's ``timeout``); the callback gets
the same options with ``env:`` and ``ini:`` entries (section ``callback_influxdb``), which ansible's
config system reads. Use ``vmforensics.memdump.influxdb`` in a module and
``vmforensics.memdump.influxdb.callback`` in the callback.
"""

from __future__ import annotations

import json

# name: (description lines, type, default, env vars, extra keys)
_OPTIONS = {
    'url': (['Base URL of InfluxDB, for example V(http://influxdb.example.com:8086).'],
            'str', 'http://127.0.0.1:8086', ['MEMDUMP_INFLUXDB_URL', 'INFLUXDB_V2_URL'], {}),
    'api': (['Which InfluxDB API to use.',
             'V(v1) writes to C(/write) (InfluxDB 1.x, and the v1 compatibility API of InfluxDB 2.x and 3.x).',
             'V(v2) writes to C(/api/v2/write) (needs O(org), O(bucket) and O(token)).',
             'V(auto) uses V(v2) when O(bucket) and O(org) are set, otherwise V(v1).',
             'Queries always use the v1 C(/query) API with InfluxQL.'],
            'str', 'auto', ['MEMDUMP_INFLUXDB_API'], {'choices': ['auto', 'v1', 'v2']}),
    'database': (['InfluxDB 1.x database (v1 API). The database must exist.'],
                 'str', 'memdump', ['MEMDUMP_INFLUXDB_DATABASE'], {}),
    'retention_policy': (['Retention policy of O(database) (v1 API). Default is the database\'s default policy.'],
                         'str', None, ['MEMDUMP_INFLUXDB_RETENTION_POLICY'], {}),
    'username': (['User name for InfluxDB authentication (v1 API, HTTP basic auth).'],
                 'str', None, ['MEMDUMP_INFLUXDB_USERNAME'], {}),
    'password': (['Password of O(username). Never logged, never written to the spool.'],
                 'str', None, ['MEMDUMP_INFLUXDB_PASSWORD'], {}),
    'org': (['InfluxDB 2.x organization (v2 API).'],
            'str', None, ['MEMDUMP_INFLUXDB_ORG', 'INFLUXDB_V2_ORG'], {}),
    'bucket': (['InfluxDB 2.x bucket (v2 API).'],
               'str', None, ['MEMDUMP_INFLUXDB_BUCKET'], {}),
    'token': (['InfluxDB 2.x API token (v2 API). Never logged, never written to the spool.'],
              'str', None, ['MEMDUMP_INFLUXDB_TOKEN', 'INFLUXDB_V2_TOKEN'], {}),
    'measurement': (['Measurement of the dump points. Run points go to the measurement C(<measurement>_run)',
                     '(C(memdump_run) by default).'],
                    'str', 'memdump', ['MEMDUMP_INFLUXDB_MEASUREMENT'], {}),
    'timeout': (['Seconds an InfluxDB request may take.'],
                'float', 5, ['MEMDUMP_INFLUXDB_TIMEOUT'], {}),
    'validate_certs': (['Verify the TLS certificate of an C(https) O(url).'],
                       'bool', True, ['MEMDUMP_INFLUXDB_VALIDATE_CERTS'], {}),
    'ca_path': (['PEM file of the CA that signed the InfluxDB server certificate.'],
                'path', None, ['MEMDUMP_INFLUXDB_CA_PATH'], {}),
}


# The module calls its per-request limit ``request_timeout``, as every module of the collection does;
# the callback's ``timeout`` also bounds all of its InfluxDB work at the end of a run, so it keeps its
# name (and its ini key). Both read the same environment variable.
_MODULE_NAMES = {'timeout': 'request_timeout'}
_CALLBACK_ONLY = {'timeout': ['The callback spends at most this long on InfluxDB once per run, however InfluxDB fails.']}


def _module_doc():
    options = {}
    for name, (desc, typ, default, env, extra) in _OPTIONS.items():
        name = _MODULE_NAMES.get(name, name)
        desc = list(desc)
        if env:
            desc.append('If not set, the environment variable%s %s %s used.' % (
                's' if len(env) > 1 else '', ' or '.join('E(%s)' % e for e in env), 'are' if len(env) > 1 else 'is'))
        opt = {'description': desc, 'type': typ}
        if default is not None:
            opt['default'] = default
        opt.update(extra)
        options[name] = opt
    return json.dumps({'options': options}, indent=2)


def _callback_doc():
    options = {}
    for name, (desc, typ, default, env, extra) in _OPTIONS.items():
        opt = {'description': list(desc) + _CALLBACK_ONLY.get(name, []), 'type': typ,
               'env': [{'name': e} for e in env],
               'ini': [{'section': 'callback_influxdb', 'key': name}]}
        if default is not None:
            opt['default'] = default
        opt.update(extra)
        options[name] = opt
    return json.dumps({'options': options}, indent=2)


class ModuleDocFragment(object):
    """Rendered below from ``_OPTIONS`` (JSON is YAML)."""


# Assigned outside the class body: they are generated, not literal YAML.
ModuleDocFragment.DOCUMENTATION = _module_doc()
ModuleDocFragment.CALLBACK = _callback_doc()
