# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The one HTTP client of the memdump service, shared by every module of the collection.

For internal collection use only: this is not a public API and may change without notice.
It is built on ``ansible.module_utils.urls`` so managed hosts need no extra Python library, and
TLS options (``validate_certs``, ``ca_path``) behave as in ``ansible.builtin.uri``.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.error
from urllib.parse import urlencode

from ansible.module_utils.common.text.converters import to_native, to_text
from ansible.module_utils.urls import Request, ConnectionError as UrlsConnectionError, SSLValidationError

from ansible_collections.vmforensics.memdump.plugins.module_utils._connection_options import DEFAULT_TIMEOUT, DEFAULT_URL

TERMINAL_STATES = ('completed', 'failed')
PENDING_STATES = ('queued', 'running')
STATES = PENDING_STATES + TERMINAL_STATES
FORMATS = ('elf', 'kdump-zlib', 'kdump-lzo', 'kdump-snappy', 'win-dmp')
# The service holds a wait request for at most this many seconds (docs/api.md: 0-120).
MAX_SERVER_WAIT = 60.0


class MemdumpError(Exception):
    """Any failure talking to the memdump service; ``str()`` is a message a responder can act on."""

    def __init__(self, msg, url=None, status=None, detail=None, body=None):
        super(MemdumpError, self).__init__(msg)
        self.msg = msg
        self.url = url
        self.status = status
        self.detail = detail
        self.body = body


class MemdumpConnectionError(MemdumpError):
    """The service could not be reached or the connection dropped: worth retrying."""


class MemdumpTLSError(MemdumpError):
    """The service's TLS certificate is not trusted: a configuration error, not retried."""


class MemdumpAuthError(MemdumpError):
    """HTTP 401: no token or a wrong one."""


class MemdumpHTTPError(MemdumpError):
    """Any other HTTP error status, with the service's ``detail``."""


def _detail_of(raw):
    """The service's ``detail`` from an error body, or the body itself (shortened)."""
    text = to_text(raw or b'', errors='surrogate_or_replace').strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500] or None
    if isinstance(data, dict) and 'detail' in data:
        detail = data['detail']
        if isinstance(detail, (list, dict)):  # validation errors come as structures
            return json.dumps(detail, sort_keys=True)[:1000]
        return to_text(detail)
    return text[:500] or None


def dumps_of(answer):
    """The list of dump records of a ``GET /api/dumps`` or ``POST`` answer (a list or ``{"dumps": [...]}``)."""
    if isinstance(answer, list):
        return answer
    if isinstance(answer, dict):
        dumps = answer.get('dumps')
        if isinstance(dumps, list):
            return dumps
    raise MemdumpError('unexpected answer from the memdump service (expected a list of dumps): %s'
                       % to_text(json.dumps(answer))[:300])


def marker_of(answer):
    """The change marker of an answer, or None if the service does not offer waiting for changes."""
    if isinstance(answer, dict):
        marker = answer.get('marker')
        if isinstance(marker, int) and not isinstance(marker, bool):
            return marker
    return None


class MemdumpClient(object):
    """Talks JSON to one memdump service. Every method raises a :class:`MemdumpError` subclass."""

    # How a failure message names the options to change: the host-side set by default, the
    # controller-side set (collect_*) when the client downloads to the controller.
    HOST_HINTS = {'url': 'url (or MEMDUMP_SERVICE_URL)', 'token': 'token or MEMDUMP_SERVICE_TOKEN',
                  'ca_path': 'ca_path', 'validate_certs': 'validate_certs: false'}
    COLLECT_HINTS = {'url': 'collect_url (or MEMDUMP_COLLECT_URL)',
                     'token': 'collect_token or MEMDUMP_COLLECT_TOKEN (else token)',
                     'ca_path': 'collect_ca_path', 'validate_certs': 'collect_validate_certs: false'}

    def __init__(self, url=None, token=None, timeout=None, validate_certs=True, ca_path=None, hints=None):
        self.url = (url or DEFAULT_URL).rstrip('/')
        self.token = token or None
        self.timeout = float(timeout) if timeout else DEFAULT_TIMEOUT
        self.validate_certs = validate_certs
        self.ca_path = ca_path
        self.hints = hints or self.HOST_HINTS

    # -- plumbing --------------------------------------------------------------------------------

    def _full_url(self, path, query=None):
        url = self.url + path
        if query:
            pairs = []
            for key, value in query:
                if value is None:
                    continue
                if isinstance(value, bool):
                    value = 'true' if value else 'false'
                pairs.append((key, to_native(value)))
            if pairs:
                url += '?' + urlencode(pairs)
        return url

    def _open(self, method, path, query=None, data=None, headers=None, timeout=None, auth=True):
        """Sends one request and returns the open response; every failure becomes a :class:`MemdumpError`.

        Redirects are never followed: the service never sends one, and following it would carry the
        token to wherever it points (another host included).
        """
        url = self._full_url(path, query)
        headers = dict(headers or {})
        if auth and self.token:
            headers['Authorization'] = 'Bearer %s' % self.token
        req = Request(headers=headers, validate_certs=self.validate_certs, ca_path=self.ca_path,
                      follow_redirects='none', timeout=timeout or self.timeout)
        try:
            return req.open(method, url, data=data)
        except urllib.error.HTTPError as e:
            try:
                raw = e.read()
            except Exception:  # pylint: disable=broad-except
                raw = b''
            detail = _detail_of(raw)
            if e.code == 401:
                raise MemdumpAuthError(
                    'the memdump service at %s rejected the request (HTTP 401: %s): set %s '
                    'to the service\'s bearer token' % (self.url, detail or 'unauthorized', self.hints['token']),
                    url=url, status=401, detail=detail)
            if 300 <= e.code < 400:
                detail = ('the answer redirects to %s, which is not followed (the token is sent only to %s): check url'
                          % (e.headers.get('Location'), self.url))
            raise MemdumpHTTPError(
                '%s %s failed with HTTP %s: %s' % (method, url, e.code, detail or to_text(e.reason)),
                url=url, status=e.code, detail=detail, body=raw)
        except (urllib.error.URLError, UrlsConnectionError, http.client.HTTPException, socket.timeout, OSError) as e:
            reason = getattr(e, 'reason', None) or e
            if isinstance(e, SSLValidationError) or isinstance(reason, ssl.SSLCertVerificationError):
                raise MemdumpTLSError(
                    'the TLS certificate of the memdump service at %s is not trusted (%s): set %s to the CA '
                    'that signed it (or %s on a trusted network)'
                    % (self.url, to_text(reason), self.hints['ca_path'], self.hints['validate_certs']), url=url)
            raise MemdumpConnectionError(
                'cannot reach the memdump service at %s (%s %s): %s; check %s and that '
                'the service is running' % (self.url, method, path, to_text(reason), self.hints['url']), url=url)

    def request(self, method, path, query=None, body=None, timeout=None, auth=True):
        """One HTTP request; returns ``(status, parsed JSON or None)``.

        ``query`` is a list of ``(name, value)`` pairs (repeatable names allowed).
        ``timeout`` overrides the per-request timeout (long-polls add their wait to it).
        """
        headers = {'Accept': 'application/json'}
        data = None
        if body is not None:
            data = json.dumps(body).encode('utf-8')
            headers['Content-Type'] = 'application/json'
        resp = self._open(method, path, query=query, data=data, headers=headers, timeout=timeout, auth=auth)
        url = self._full_url(path, query)
        try:
            raw = resp.read()
            status = resp.getcode()
        except (http.client.HTTPException, socket.timeout, OSError) as e:
            raise MemdumpConnectionError('the connection to the memdump service at %s broke while reading the answer to '
                                         '%s %s: %s' % (self.url, method, path, to_text(e)), url=url)
        finally:
            resp.close()
        if not raw:
            return status, None
        try:
            return status, json.loads(to_text(raw, errors='surrogate_or_strict'))
        except ValueError:
            raise MemdumpError('%s %s answered HTTP %s with a body that is not JSON: %s'
                               % (method, url, status, to_text(raw, errors='surrogate_or_replace')[:300]),
                               url=url, status=status)

    # -- API -------------------------------------------------------------------------------------

    def health(self):
        """``GET /health``; a 503 answer (libvirt unreachable) is returned, not raised."""
        try:
            dummy, data = self.request('GET', '/health', auth=False)
        except MemdumpHTTPError as e:
            if e.status == 503 and e.body:
                try:
                    data = json.loads(to_text(e.body, errors='surrogate_or_replace'))
                except ValueError:
                    data = None
                if isinstance(data, dict):
                    return data
            raise
        return data if isinstance(data, dict) else {}

    def features(self):
        """The optional API features ``/health`` lists (``wait``, ``dry_run``, ...), as a set.

        A service without ``/health`` (404), or one that answers it with an HTTP error or a body that
        is not JSON, offers none. Connection, TLS and token errors are raised: they say nothing about
        the service's features.
        """
        try:
            features = self.health().get('features')
        except (MemdumpConnectionError, MemdumpTLSError, MemdumpAuthError):
            raise
        except MemdumpError:
            return frozenset()
        if not isinstance(features, list):
            return frozenset()
        return frozenset(f for f in features if isinstance(f, str))

    def list_dumps(self, vms=None, label=None, state=None, dump_ids=None, wait=None, marker=None):
        """One ``GET /api/dumps`` with filters (its first page); returns ``(dumps, marker or None)``.

        With ``wait`` and ``marker`` the service holds the answer until a dump changes state.
        """
        dumps, marker, dummy = self._get_dumps(vms, label, state, dump_ids, wait, marker)
        return dumps, marker

    def list_all_dumps(self, vms=None, label=None, state=None, dump_ids=None):
        """``GET /api/dumps`` page by page (``before`` = the answer's ``next_before``); returns every dump.

        A service that does not page answers without ``next_before``: one request.
        """
        dumps, dummy, next_before = self._get_dumps(vms, label, state, dump_ids)
        asked = set()
        while next_before and next_before not in asked:  # a page that points at itself ends the walk
            asked.add(next_before)
            page, dummy, next_before = self._get_dumps(vms, label, state, dump_ids, before=next_before)
            dumps.extend(page)
        return dumps

    def _get_dumps(self, vms=None, label=None, state=None, dump_ids=None, wait=None, marker=None, before=None):
        query = [('vm', vm) for vm in (vms or [])]
        query += [('dump_id', dump_id) for dump_id in (dump_ids or [])]
        query += [('label', label), ('state', state), ('before', before)]
        timeout = None
        if wait and marker is not None:
            wait = min(float(wait), MAX_SERVER_WAIT)
            query += [('wait', '%g' % wait), ('marker', marker)]
            timeout = wait + self.timeout
        dummy, answer = self.request('GET', '/api/dumps', query=query, timeout=timeout)
        next_before = answer.get('next_before') if isinstance(answer, dict) else None
        return dumps_of(answer), marker_of(answer), next_before if isinstance(next_before, str) else None

    def create_dumps(self, vms, label=None, fmt=None, force=False, request_id=None, dry_run=False, method=None):
        """``POST /api/dumps``; returns the records, in the order of ``vms``.

        With ``dry_run`` the service creates nothing and answers what it would do; only send it to a
        service whose ``/health`` lists the ``dry_run`` feature (others ignore the field and dump).
        """
        body = {'vms': list(vms), 'force': bool(force)}
        if label:
            body['label'] = label
        if fmt:
            body['format'] = fmt
        if method:
            body['method'] = method
        if request_id:
            body['request_id'] = request_id
        if dry_run:
            body['dry_run'] = True
        dummy, answer = self.request('POST', '/api/dumps', body=body)
        return dumps_of(answer)

    # -- added for collection and custody (issue 14) ------------------------------------------

    def get_dump(self, dump_id):
        """``GET /api/dumps/{dump_id}``: the record (without the answer's ``marker``)."""
        dummy, answer = self.request('GET', '/api/dumps/%s' % dump_id)
        if not isinstance(answer, dict):
            raise MemdumpError('unexpected answer from the memdump service for dump %s: %s'
                               % (dump_id, to_text(json.dumps(answer))[:300]))
        answer.pop('marker', None)
        return answer

    def delete_dump(self, dump_id):
        """``DELETE /api/dumps/{dump_id}``: deletes the image (the record is kept); returns the record."""
        dummy, answer = self.request('DELETE', '/api/dumps/%s' % dump_id)
        return answer if isinstance(answer, dict) else {}

    def mark_collected(self, dump_id, sha256, custody_head=None):
        """``POST /api/dumps/{dump_id}/collected``: tells the service that the image was collected and
        verified with this SHA-256 (its retention may then remove it) and, with ``custody_head``
        (``{label, seq, hash}``), where the controller's custody log stood, which the service keeps as a
        witness; returns the record."""
        body = {'sha256': sha256}
        if custody_head:
            body['custody_head'] = custody_head
        dummy, answer = self.request('POST', '/api/dumps/%s/collected' % dump_id, body=body)
        return answer if isinstance(answer, dict) else {}

    def open_file(self, dump_id, offset=0, timeout=None):
        """``GET /api/dumps/{dump_id}/file`` from byte ``offset`` (``Range: bytes=N-``): the open response.

        The caller reads it in chunks and closes it. Raises like :meth:`request` (no redirect is followed).
        """
        headers = {'Accept': 'application/octet-stream', 'Accept-Encoding': 'identity'}
        if offset:
            headers['Range'] = 'bytes=%d-' % offset
        return self._open('GET', '/api/dumps/%s/file' % dump_id, headers=headers, timeout=timeout)
