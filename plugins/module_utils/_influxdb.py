# -*- coding: utf-8 -*-
# Copyright: contributors to the vmforensics.memdump collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The one InfluxDB client of the collection. For internal collection use only.

Used by the ``vmforensics.memdump.influxdb`` callback (on the controller) and by the
``vmforensics.memdump.memdump_records`` module. One HTTP stack, ``ansible.module_utils.urls``, for
everything: the InfluxDB 1.x API (``/write``, ``/query``; also the v1 compatibility API of InfluxDB
2.x/3.x), the InfluxDB 2.x write API (``/api/v2/write``) and ``/ping``; and one line-protocol writer
(:func:`line`), so neither the module nor the callback needs a library beyond ansible-core.
"""

from __future__ import annotations

import json
import math

from ansible.module_utils.basic import env_fallback
from ansible.module_utils.common.text.converters import to_native, to_text
from ansible.module_utils.six.moves.urllib.error import HTTPError, URLError
from ansible.module_utils.six.moves.urllib.parse import urlencode, urlsplit, urlunsplit
from ansible.module_utils.urls import open_url

DEFAULT_MEASUREMENT = 'memdump'
# Where the callback writes custody heads and memdump_verify reads them (whatever the dump measurement is).
CUSTODY_MEASUREMENT = 'memdump_custody'
DEFAULT_TIMEOUT = 5
API_CHOICES = ('auto', 'v1', 'v2')

# HTTP statuses with which InfluxDB refuses points themselves (a bad line, a field type conflict, a point
# outside the retention period: 400 from 1.x, 400 or 422 from 2.x): sending them again never succeeds.
BAD_POINT_STATUSES = (400, 422)

# Line protocol escaping (https://docs.influxdata.com/influxdb/v1/write_protocols/line_protocol_reference/):
# a measurement escapes commas and spaces; tag keys, tag values and field keys also equals signs; string field
# values double quotes and backslashes. Line breaks and tabs become their escape sequences, so that no value
# can end a line and start another point.
_BREAKS = {'\n': '\\n', '\r': '\\r', '\t': '\\t'}
_ESCAPE_MEASUREMENT = dict(_BREAKS, **{',': '\\,', ' ': '\\ '})
_ESCAPE_KEY = dict(_ESCAPE_MEASUREMENT, **{'=': '\\='})
_ESCAPE_STRING = {'"': '\\"', '\\': '\\\\'}


def _escape(text, table):
    return ''.join(table.get(char, char) for char in to_text(text))


def _field_value(value):
    """A field value in line protocol, or None for one that cannot be written (NaN, infinity, other types)."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, int):
        return '%di' % value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        text = repr(value)
        # A whole number needs no ".0" (a number without the "i" suffix is a float in line protocol).
        return text[:-2] if text.endswith('.0') else text
    if isinstance(value, str):
        return '"%s"' % _escape(value, _ESCAPE_STRING)
    return None


def line(measurement, tags, fields, time_ns):
    """One point in line protocol: tags (empty values left out) and fields (None and unwritable values left
    out) sorted by key, an integer timestamp in nanoseconds. ValueError when no field is left (InfluxDB
    refuses a point without fields)."""
    head = _escape(measurement, _ESCAPE_MEASUREMENT)
    for key in sorted(tags):
        value = tags[key]
        if value in (None, '') or key == '':
            continue
        text = _escape(value, _ESCAPE_KEY)
        if text.endswith('\\'):
            # A trailing backslash would escape the separator after it: end the value with an escaped space.
            text += ' '
        head += ',%s=%s' % (_escape(key, _ESCAPE_KEY), text)
    written = []
    for key in sorted(fields):
        value = fields[key]
        text = None if value is None else _field_value(value)
        if text is not None:
            written.append('%s=%s' % (_escape(key, _ESCAPE_KEY), text))
    if not written:
        raise ValueError('a point of %s needs at least one field' % measurement)
    return '%s %s %d' % (head, ','.join(written), int(time_ns))


# One table for the connection settings: option name -> environment variables, in order of
# precedence. The doc fragment ``vmforensics.memdump.influxdb`` documents the same names.
ENV_VARS = {
    'url': ['MEMDUMP_INFLUXDB_URL', 'INFLUXDB_V2_URL'],
    'api': ['MEMDUMP_INFLUXDB_API'],
    'database': ['MEMDUMP_INFLUXDB_DATABASE'],
    'retention_policy': ['MEMDUMP_INFLUXDB_RETENTION_POLICY'],
    'username': ['MEMDUMP_INFLUXDB_USERNAME'],
    'password': ['MEMDUMP_INFLUXDB_PASSWORD'],
    'org': ['MEMDUMP_INFLUXDB_ORG', 'INFLUXDB_V2_ORG'],
    'bucket': ['MEMDUMP_INFLUXDB_BUCKET'],
    'token': ['MEMDUMP_INFLUXDB_TOKEN', 'INFLUXDB_V2_TOKEN'],
    'measurement': ['MEMDUMP_INFLUXDB_MEASUREMENT'],
    'timeout': ['MEMDUMP_INFLUXDB_TIMEOUT'],
    'validate_certs': ['MEMDUMP_INFLUXDB_VALIDATE_CERTS'],
    'ca_path': ['MEMDUMP_INFLUXDB_CA_PATH'],
}


class InfluxDBError(Exception):
    """A failed InfluxDB request; the message never contains credentials."""

    def __init__(self, msg, status=None):
        super(InfluxDBError, self).__init__(msg)
        self.status = status


def influxdb_argument_spec():
    """Module argument spec of the shared connection options (with their environment fallbacks)."""
    def env(name):
        return (env_fallback, ENV_VARS[name])

    return dict(
        url=dict(type='str', fallback=env('url'), default='http://127.0.0.1:8086'),
        api=dict(type='str', choices=list(API_CHOICES), fallback=env('api'), default='auto'),
        database=dict(type='str', fallback=env('database'), default='memdump'),
        retention_policy=dict(type='str', fallback=env('retention_policy')),
        username=dict(type='str', fallback=env('username')),
        password=dict(type='str', no_log=True, fallback=env('password')),
        org=dict(type='str', fallback=env('org')),
        bucket=dict(type='str', fallback=env('bucket')),
        token=dict(type='str', no_log=True, fallback=env('token')),
        measurement=dict(type='str', fallback=env('measurement'), default=DEFAULT_MEASUREMENT),
        # The callback's option ``timeout`` (module options name every per-request limit request_timeout).
        request_timeout=dict(type='float', fallback=env('timeout'), default=DEFAULT_TIMEOUT),
        validate_certs=dict(type='bool', fallback=env('validate_certs'), default=True),
        ca_path=dict(type='path', fallback=env('ca_path')),
    )


def safe_url(url):
    """The URL without user info, query or fragment: safe for messages and logs."""
    try:
        parts = urlsplit(url or '')
        netloc = parts.netloc.rsplit('@', 1)[-1]
        return urlunsplit((parts.scheme, netloc, parts.path, '', ''))
    except ValueError:
        return '<invalid url>'


def url_password(url):
    """The password in a URL's user info (``http://user:pw@host``), or None."""
    try:
        return urlsplit(url or '').password
    except ValueError:
        return None


def resolve_api(api, bucket=None, org=None):
    """``v1`` or ``v2``. ``auto`` means v2 when a bucket and an org are set, else v1."""
    if api in ('v1', 'v2'):
        return api
    if bucket and org:
        return 'v2'
    return 'v1'


def quote_ident(name):
    """An InfluxQL identifier in double quotes."""
    return '"%s"' % to_text(name).replace('\\', '\\\\').replace('"', '\\"')


def quote_string(value):
    """An InfluxQL string literal in single quotes."""
    return "'%s'" % to_text(value).replace('\\', '\\\\').replace("'", "\\'")


def _error_text(err):
    """The server's words from an HTTPError body (InfluxDB answers ``{"error": "..."}``)."""
    try:
        body = err.read()
    except Exception:  # pylint: disable=broad-except
        body = b''
    text = to_text(body, errors='surrogate_or_replace').strip()
    try:
        data = json.loads(text)
        if isinstance(data, dict) and data.get('error'):
            text = to_text(data['error'])
    except ValueError:
        pass
    return text[:500]


def _fetch(url, where, **kwargs):
    """open_url and read the answer: ``(status, body)``. Getting no (whole) answer becomes InfluxDBError
    naming ``where``; HTTPError (an answer with an error status) passes through: the caller knows what
    the status means."""
    try:
        resp = open_url(url, **kwargs)
        return resp.getcode(), resp.read()
    except HTTPError:
        raise
    except URLError as err:
        raise InfluxDBError('InfluxDB %s failed: %s' % (where, to_native(getattr(err, 'reason', err))))
    except Exception as err:  # socket timeouts, resets, TLS errors
        raise InfluxDBError('InfluxDB %s failed: %s: %s' % (where, type(err).__name__, to_native(err)))


class InfluxDBv1(object):
    """InfluxDB 1.x API: ``/write`` and ``/query``.

    HTTP basic auth when a username is set; else ``Authorization: Token`` when a token is set (the v1
    compatibility API of InfluxDB 2.x and 3.x).
    """

    def __init__(self, url, database, retention_policy=None, username=None, password=None,
                 timeout=DEFAULT_TIMEOUT, validate_certs=True, ca_path=None, token=None):
        if not url:
            raise InfluxDBError('no InfluxDB URL: set url or MEMDUMP_INFLUXDB_URL')
        if not database:
            raise InfluxDBError('no InfluxDB database: set database or MEMDUMP_INFLUXDB_DATABASE')
        self.url = url.rstrip('/')
        self.database = database
        self.retention_policy = retention_policy
        self.username = username
        self.password = password
        self.timeout = timeout
        self.validate_certs = validate_certs
        self.ca_path = ca_path
        self.token = token

    def _request(self, method, path, params, data=None, headers=None, timeout=None):
        url = '%s%s?%s' % (self.url, path, urlencode(params))
        kwargs = dict(method=method, data=data, headers=headers or {}, timeout=timeout or self.timeout,
                      validate_certs=self.validate_certs, follow_redirects='safe')
        if self.ca_path:
            kwargs['ca_path'] = self.ca_path
        if self.username:
            kwargs.update(url_username=self.username, url_password=self.password or '', force_basic_auth=True)
        elif self.token:  # InfluxDB 2.x/3.x v1 compatibility API
            kwargs['headers']['Authorization'] = 'Token %s' % self.token
        where = '%s %s%s' % (method, safe_url(self.url), path)
        try:
            return _fetch(url, where, **kwargs)
        except HTTPError as err:
            status = err.code
            hint = ''
            if status == 401:
                hint = '; check username/password (MEMDUMP_INFLUXDB_USERNAME, MEMDUMP_INFLUXDB_PASSWORD)'
            elif status == 404:
                hint = '; does database %r exist?' % self.database
            raise InfluxDBError('InfluxDB %s answered HTTP %s: %s%s' % (where, status, _error_text(err), hint), status=status)

    def write(self, lines, precision='ns', timeout=None):
        """Writes line-protocol lines (a list of str) in one request."""
        if not lines:
            return
        params = {'db': self.database, 'precision': precision}
        if self.retention_policy:
            params['rp'] = self.retention_policy
        body = ('\n'.join(lines) + '\n').encode('utf-8')
        self._request('POST', '/write', params, data=body,
                      headers={'Content-Type': 'text/plain; charset=utf-8'}, timeout=timeout)

    def query(self, q, method='GET', epoch=None):
        """Runs InfluxQL; returns the list of ``results``, raising on any statement error."""
        params = {'db': self.database, 'q': q}
        if self.retention_policy:
            params['rp'] = self.retention_policy
        if epoch:
            params['epoch'] = epoch
        dummy, raw = self._request(method, '/query', params)
        try:
            data = json.loads(to_text(raw))
        except ValueError:
            raise InfluxDBError('InfluxDB %s/query answered no JSON' % safe_url(self.url))
        if data.get('error'):
            raise InfluxDBError('InfluxDB query failed: %s' % data['error'])
        results = data.get('results') or []
        for res in results:
            if res.get('error'):
                raise InfluxDBError('InfluxDB query failed: %s' % res['error'])
        return results


def ping(url, timeout=DEFAULT_TIMEOUT, validate_certs=True, ca_path=None):
    """Asks ``<url>/ping`` (InfluxDB 1.x and 2.x, no credentials needed); raises InfluxDBError when
    nothing answers in time. Any HTTP status is an answer."""
    if not url:
        raise InfluxDBError('no InfluxDB URL: set url or MEMDUMP_INFLUXDB_URL')
    where = 'GET %s/ping' % safe_url(url.rstrip('/'))
    kwargs = dict(method='GET', timeout=timeout, validate_certs=validate_certs, follow_redirects='safe')
    if ca_path:
        kwargs['ca_path'] = ca_path
    try:
        _fetch(url.rstrip('/') + '/ping', where, **kwargs)
    except HTTPError:
        return


def series_rows(results):
    """Flattens query ``results`` into a list of dicts (column -> value), series tags merged in."""
    rows = []
    for res in results:
        for series in res.get('series') or []:
            columns = series.get('columns') or []
            tags = series.get('tags') or {}
            for values in series.get('values') or []:
                row = dict(tags)
                row.update(zip(columns, values))
                rows.append(row)
    return rows


def write_v2(url, org, bucket, token, lines, timeout=DEFAULT_TIMEOUT, validate_certs=True, ca_path=None, precision='ns'):
    """Writes line-protocol lines through the InfluxDB 2.x write API (``POST /api/v2/write``)."""
    if not (url and org and bucket and token):
        raise InfluxDBError('the InfluxDB v2 API needs url, org, bucket and token '
                            '(MEMDUMP_INFLUXDB_URL, MEMDUMP_INFLUXDB_ORG, MEMDUMP_INFLUXDB_BUCKET, MEMDUMP_INFLUXDB_TOKEN)')
    if not lines:
        return
    base = url.rstrip('/')
    where = 'POST %s/api/v2/write' % safe_url(base)
    target = '%s/api/v2/write?%s' % (base, urlencode({'org': org, 'bucket': bucket, 'precision': precision}))
    kwargs = dict(method='POST', data=('\n'.join(lines) + '\n').encode('utf-8'), timeout=timeout,
                  headers={'Content-Type': 'text/plain; charset=utf-8', 'Authorization': 'Token %s' % token},
                  validate_certs=validate_certs, follow_redirects='safe')
    if ca_path:
        kwargs['ca_path'] = ca_path
    try:
        _fetch(target, where, **kwargs)
    except HTTPError as err:
        # InfluxDB 2.x answers {"code": ..., "message": ...}; the token never appears in it or here.
        text = _error_text(err)
        try:
            data = json.loads(text)
            if isinstance(data, dict) and data.get('message'):
                text = to_text(data['message'])
        except ValueError:
            pass
        hint = '; check token (MEMDUMP_INFLUXDB_TOKEN) and org' if err.code in (401, 403) else ''
        if err.code == 404:
            hint = '; do org %r and bucket %r exist (InfluxDB 1.x has no v2 API before 1.8: set api: v1)?' % (org, bucket)
        raise InfluxDBError('InfluxDB %s answered HTTP %s: %s%s' % (where, err.code, text.replace(token, '<hidden>'), hint),
                            status=err.code)
