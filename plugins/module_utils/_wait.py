# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Waiting for dumps to reach a final state.

For internal collection use only: this is not a public API and may change without notice.

A monotonic deadline; long-polls (``wait`` + ``marker``) when the service's answers carry a
``marker``, interval polling otherwise; transient connection errors are retried until the deadline.
"""

from __future__ import annotations

import time

from ansible_collections.vmforensics.memdump.plugins.module_utils._client import (
    MAX_SERVER_WAIT,
    TERMINAL_STATES,
    MemdumpConnectionError,
)


class WaitTimeout(Exception):
    """The deadline passed; ``records`` holds the last known record of every dump."""

    def __init__(self, msg, records, elapsed):
        super(WaitTimeout, self).__init__(msg)
        self.msg = msg
        self.records = records
        self.elapsed = elapsed


def is_done(record):
    return record.get('state') in TERMINAL_STATES


def describe_pending(record):
    """``vm (running, 42.0%, dump abc...)`` for a timeout message."""
    parts = [record.get('state') or 'unknown']
    progress = record.get('progress')
    if isinstance(progress, (int, float)) and not isinstance(progress, bool):
        parts.append('%.1f%%' % progress)
    if record.get('dump_id'):
        parts.append('dump %s' % record['dump_id'])
    return '%s (%s)' % (record.get('vm') or record.get('dump_id'), ', '.join(parts))


class DumpWaiter(object):
    """Waits until every dump id in ``dump_ids`` is ``completed`` or ``failed``.

    ``fetch(dump_ids, wait, marker)`` returns ``(records, marker)``; it is
    :meth:`MemdumpClient.list_dumps` in the modules and a fake in unit tests.
    """

    def __init__(self, fetch, timeout, poll_interval, clock=time.monotonic, sleep=time.sleep):
        self.fetch = fetch
        self.timeout = float(timeout)
        self.poll_interval = max(float(poll_interval), 0.01)
        self.clock = clock
        self.sleep = sleep
        self.requests = 0
        self.long_polls = 0
        self.last_error = None

    def _sleep_until(self, deadline, seconds):
        remaining = deadline - self.clock()
        if remaining > 0:
            self.sleep(min(seconds, remaining))

    def current(self, dump_ids):
        """One look at the dumps, no waiting (check mode)."""
        records, dummy = self.fetch(dump_ids, None, None)
        return records

    def wait(self, dump_ids, url='', on_first=None):
        """Returns ``(records by dump id, elapsed seconds)``; raises :class:`WaitTimeout`.

        ``on_first(records)`` is called with the answer of the first successful request (to reject
        unknown ids at once); it may raise.
        """
        start = self.clock()
        deadline = start + self.timeout
        records = {}
        marker = None
        while True:
            remaining = deadline - self.clock()
            server_wait = None
            if marker is not None and remaining > 0:
                server_wait = min(remaining, MAX_SERVER_WAIT)
            asked = self.clock()
            try:
                found, new_marker = self.fetch(dump_ids, server_wait, marker)
                self.requests += 1
                self.last_error = None
                if server_wait:
                    self.long_polls += 1
            except MemdumpConnectionError as e:
                # Transient: the service restarts, the network blips. Retry until the deadline.
                self.last_error = e
                if self.clock() >= deadline:
                    self._timeout(dump_ids, records, start, url)
                self._sleep_until(deadline, self.poll_interval)
                continue
            if on_first is not None:
                on_first(found)
                on_first = None
            changed = any((records.get(r['dump_id']) or {}).get('state') != r.get('state') for r in found)
            for record in found:
                records[record['dump_id']] = record
            if all(dump_id in records and is_done(records[dump_id]) for dump_id in dump_ids):
                return records, self.clock() - start
            if self.clock() >= deadline:
                self._timeout(dump_ids, records, start, url)
            if new_marker is None:
                marker = None
                self._sleep_until(deadline, self.poll_interval)
            else:
                # A holding service answers an unchanged marker only when its hold expires, which is
                # longer than the poll interval. Sooner means it does not hold (however slow the link
                # is): keep the poll interval between requests instead of spinning.
                took = self.clock() - asked
                if server_wait and new_marker == marker and not changed and took < self.poll_interval:
                    self._sleep_until(deadline, self.poll_interval - took)
                marker = new_marker

    def _timeout(self, dump_ids, records, start, url):
        elapsed = self.clock() - start
        pending = [records.get(dump_id) or {'dump_id': dump_id, 'state': 'unknown'}
                   for dump_id in dump_ids if not is_done(records.get(dump_id) or {})]
        msg = 'timed out after %.1f s (timeout=%g) waiting for %d dump(s) on %s; still pending: %s' % (
            elapsed, self.timeout, len(pending), url, ', '.join(describe_pending(r) for r in pending))
        if self.last_error is not None:
            msg += '; last error: %s' % self.last_error
        raise WaitTimeout(msg, records, elapsed)
