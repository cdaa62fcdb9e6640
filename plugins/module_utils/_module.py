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
import traceback

from ansible.module_utils.basic import AnsibleModule, env_fallback

from ansible_collections.vmforensics.memdump.plugins.module_utils._client import (
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    MemdumpClient,
    MemdumpError,
)

# The connection options of every module, defined once. The per-request limit is
# ``request_timeout`` everywhere; no module has an option called ``timeout``, so a group
# ``module_defaults`` entry can never be read as memdump_wait's deadline (``wait_timeout``).
CONNECTION_ARGSPEC = dict(
    url=dict(type='str', default=DEFAULT_URL, fallback=(env_fallback, ['MEMDUMP_SERVICE_URL'])),
    token=dict(type='str', no_log=True, fallback=(env_fallback, ['MEMDUMP_SERVICE_TOKEN'])),
    request_timeout=dict(type='float', default=DEFAULT_TIMEOUT, fallback=(env_fallback, ['MEMDUMP_SERVICE_TIMEOUT'])),
    validate_certs=dict(type='bool', default=True),
    ca_path=dict(type='path'),
)


def generate_argspec(**extra):
    """The connection options merged with a module's own options (``extra`` wins on a clash)."""
    spec = copy.deepcopy(CONNECTION_ARGSPEC)
    spec.update(extra)
    return spec


class MemdumpModule(AnsibleModule):
    """An AnsibleModule with a :class:`MemdumpClient` built from the connection options.

    :meth:`run` owns the error path: a :class:`MemdumpError` becomes ``fail_json`` here, once for
    every module.
    """

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

    def run(self, fn):
        """Calls ``fn(self)``, which ends with ``exit_json``; a MemdumpError fails the task with its URL and HTTP status."""
        try:
            fn(self)
        except MemdumpError as e:
            self.fail_json(msg=e.msg, url=e.url, status=e.status, exception=traceback.format_exc())

    @property
    def client(self):
        if self._client is None:
            params = self.params
            self._client = MemdumpClient(
                url=params['url'], token=params['token'], timeout=params['request_timeout'],
                validate_certs=params['validate_certs'], ca_path=params['ca_path'])
        return self._client
