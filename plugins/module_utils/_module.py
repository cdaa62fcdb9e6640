# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Base module class and argument spec of the connection options (doc fragment ``vmforensics.memdump.connection``).

For internal collection use only: this is not a public API and may change without notice.
"""

from __future__ import annotations

import copy
import gc

from ansible.module_utils.basic import AnsibleModule, env_fallback

from ansible_collections.vmforensics.memdump.plugins.module_utils._client import (
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    MemdumpClient,
)

# The connection options, defined once. ``timeout`` is the per-request timeout; memdump_wait uses
# ``timeout`` for its whole-wait deadline and keeps the per-request one as ``request_timeout``
# (every module accepts ``request_timeout``, so ``module_defaults`` can set it for the whole group).
CONNECTION_ARGSPEC = dict(
    url=dict(type='str', default=DEFAULT_URL, fallback=(env_fallback, ['MEMDUMP_SERVICE_URL'])),
    token=dict(type='str', no_log=True, fallback=(env_fallback, ['MEMDUMP_SERVICE_TOKEN'])),
    timeout=dict(type='float', default=DEFAULT_TIMEOUT, aliases=['request_timeout'],
                 fallback=(env_fallback, ['MEMDUMP_SERVICE_TIMEOUT'])),
    validate_certs=dict(type='bool', default=True),
    ca_path=dict(type='path'),
)


def generate_argspec(**extra):
    """The connection options merged with a module's own options (``extra`` wins on a clash)."""
    spec = copy.deepcopy(CONNECTION_ARGSPEC)
    spec.update(extra)
    return spec


def wait_argspec(**extra):
    """Argument spec for memdump_wait: ``timeout`` is the wait deadline, ``request_timeout`` per request."""
    spec = copy.deepcopy(CONNECTION_ARGSPEC)
    per_request = spec.pop('timeout')
    per_request.pop('aliases')
    spec['request_timeout'] = per_request
    spec.update(extra)
    return spec


class MemdumpModule(AnsibleModule):
    """An AnsibleModule with a :class:`MemdumpClient` built from the connection options."""

    request_timeout_option = 'timeout'

    def __init__(self, *args, **kwargs):
        super(MemdumpModule, self).__init__(*args, **kwargs)
        self._client = None

    def exit_json(self, **kwargs):
        # The result is final and the process is about to end: frozen objects are skipped by the
        # interpreter's last garbage collection, which otherwise costs ~30 ms between a dump's
        # completion and the task's end (docs/performance.md, P1). Nothing relies on finalizers here.
        gc.freeze()
        super(MemdumpModule, self).exit_json(**kwargs)

    def fail_json(self, msg, **kwargs):
        gc.freeze()
        super(MemdumpModule, self).fail_json(msg, **kwargs)

    @property
    def client(self):
        if self._client is None:
            params = self.params
            self._client = MemdumpClient(
                url=params['url'], token=params['token'], timeout=params[self.request_timeout_option],
                validate_certs=params['validate_certs'], ca_path=params['ca_path'])
        return self._client
