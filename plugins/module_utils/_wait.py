# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Waiting for dumps to reach a final state.

For internal collection use only: this is not a public API and may change without notice.

A monotonic deadline; the strategy comes from what the service says it supports (its ``/health``
``features``), never from how long its answers take: long-polls (``wait`` + ``marker``) when it
lists ``wait``, a request every ``wait_sleep`` seconds otherwise. Transient connection errors are
retried until the deadline.
"""

from __future__ import annotations

import functools
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

    ``fetch(dump_ids, wait, marker)`` returns ``(records, marker)``; ``holds_requests()`` says whether
    the service holds a long-poll (its ``/health`` lists ``wait``). memdump_wait builds them on
    :meth:`MemdumpClient.list_dumps` and :meth:`MemdumpClient.features`; unit tests pass fakes.
    """

    def __init__(self, fetch, holds_requests, wait_timeout, wait_sleep, clock=time.monotonic, sleep=time.sleep):
        self.fetch = fetch
        self.holds_requests = holds_requests
        self.wait_timeout = float(wait_timeout)
        self.wait_sleep = max(float(wait_sleep), 0.01)
        self.clock = clock
        self.sleep = sleep
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
        deadline = start + self.wait_timeout
        records = {}

        def give_up():
            self._timeout(dump_ids, records, start, url)

        marker = None
        holds = None
        while True:
            server_wait = None
            if holds and marker is not None:
                server_wait = min(deadline - self.clock(), MAX_SERVER_WAIT)
                if server_wait <= 0:
                    server_wait = None
            found, marker = self._until_reachable(
                functools.partial(self.fetch, dump_ids, server_wait, marker if server_wait else None), deadline, give_up)
            if on_first is not None:
                on_first(found)
                on_first = None
            for record in found:
                records[record['dump_id']] = record
            if all(dump_id in records and is_done(records[dump_id]) for dump_id in dump_ids):
                return records, self.clock() - start
            if self.clock() >= deadline:
                give_up()
            if holds is None:
                # Asked only once something is still pending, so that dumps already final cost one
                # request (docs/performance.md, P5).
                holds = bool(self._until_reachable(self.holds_requests, deadline, give_up))
            if not (holds and marker is not None):
                self._sleep_until(deadline, self.wait_sleep)
            # Otherwise ask again at once: a held answer means a dump changed state or the hold expired.

    def _until_reachable(self, call, deadline, give_up):
        """``call()``, again every ``wait_sleep`` seconds while the connection fails; ``give_up()`` at the deadline."""
        while True:
            try:
                result = call()
            except MemdumpConnectionError as e:
                # Transient: the service restarts, the network blips.
                self.last_error = e
                if self.clock() >= deadline:
                    give_up()
                self._sleep_until(deadline, self.wait_sleep)
                continue
            self.last_error = None
            return result

    def _timeout(self, dump_ids, records, start, url):
        elapsed = self.clock() - start
        pending = [records.get(dump_id) or {'dump_id': dump_id, 'state': 'unknown'}
                   for dump_id in dump_ids if not is_done(records.get(dump_id) or {})]
        msg = 'timed out after %.1f s (wait_timeout=%g) waiting for %d dump(s) on %s; still pending: %s' % (
            elapsed, self.wait_timeout, len(pending), url, ', '.join(describe_pending(r) for r in pending))
        if self.last_error is not None:
            msg += '; last error: %s' % self.last_error
        raise WaitTimeout(msg, records, elapsed)
