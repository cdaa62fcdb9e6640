# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The connection options of the collection, defined once (the community.hashi_vault ``_connection_options`` idea).

For internal collection use only: this is not a public API and may change without notice.

Two endpoints, two differently named option sets:

* ``HOST_OPTIONS``: the service as the hypervisor reaches it (loopback by default). Every module and
  action plugin of the action group ``group/vmforensics.memdump.memdump`` accepts them, so
  ``module_defaults`` for the group is right for each member. Documented by doc fragment
  ``vmforensics.memdump.connection``.
* ``COLLECT_OPTIONS``: the service as the controller reaches it (downloads, witnesses). Documented by
  doc fragment ``vmforensics.memdump.collect_connection``.

The same argument spec serves modules (``AnsibleModule``: ``env_fallback`` reads the managed host's
environment) and action plugins (``ActionBase.validate_argument_spec``: the fallback runs where the
plugin runs, the controller).
"""

from __future__ import annotations

import copy

from ansible.module_utils.basic import env_fallback

DEFAULT_URL = 'http://127.0.0.1:5001'
DEFAULT_TIMEOUT = 30.0

HOST_OPTIONS = dict(
    url=dict(type='str', default=DEFAULT_URL, fallback=(env_fallback, ['MEMDUMP_SERVICE_URL'])),
    token=dict(type='str', no_log=True, fallback=(env_fallback, ['MEMDUMP_SERVICE_TOKEN'])),
    request_timeout=dict(type='float', default=DEFAULT_TIMEOUT, fallback=(env_fallback, ['MEMDUMP_SERVICE_TIMEOUT'])),
    validate_certs=dict(type='bool', default=True),
    ca_path=dict(type='path'),
)

# No defaults here on purpose: collect_url and collect_token fall back to the host-side values under
# rules that need the task's context (see collect_connection()).
COLLECT_OPTIONS = dict(
    collect_url=dict(type='str', fallback=(env_fallback, ['MEMDUMP_COLLECT_URL'])),
    collect_token=dict(type='str', no_log=True, fallback=(env_fallback, ['MEMDUMP_COLLECT_TOKEN'])),
    collect_request_timeout=dict(type='float', default=DEFAULT_TIMEOUT,
                                 fallback=(env_fallback, ['MEMDUMP_COLLECT_TIMEOUT'])),
    collect_validate_certs=dict(type='bool', default=True),
    collect_ca_path=dict(type='path', fallback=(env_fallback, ['MEMDUMP_COLLECT_CA_PATH'])),
)


def generate_argspec(**extra):
    """The host-side connection options merged with a module's own options (``extra`` wins on a clash)."""
    spec = copy.deepcopy(HOST_OPTIONS)
    spec.update(extra)
    return spec


def delete_argspec():
    """The options of memdump_delete: one spec for the module on the host and the action plugin on the controller."""
    return generate_argspec(
        dump_id=dict(type='str', required=True),
        vm=dict(type='str'),
        sha256=dict(type='str'),
        evidence_dir=dict(type='path'),
        label=dict(type='str'),
        host=dict(type='str'),
        allowed_signers=dict(type='path'),
        allow_unsigned=dict(type='bool', default=False),
        signing_key=dict(type='path', no_log=False),
        operator=dict(type='str'),
        collection_version=dict(type='str'),
    )


def generate_collect_argspec(**extra):
    """Host-side and controller-side connection options with a plugin's own options."""
    spec = copy.deepcopy(HOST_OPTIONS)
    spec.update(copy.deepcopy(COLLECT_OPTIONS))
    spec.update(extra)
    return spec


class ConnectionOptionsError(Exception):
    """The options do not say how to reach the service."""


def collect_connection(params, on_controller):
    """The keyword arguments of ``MemdumpClient`` for the controller-side endpoint.

    ``params`` are validated parameters of a ``generate_collect_argspec`` spec. ``collect_token`` falls
    back to ``token``. ``collect_url`` falls back to ``url`` only when the task's host is the controller
    itself (``on_controller``): elsewhere ``url`` is the service as the hypervisor reaches it (loopback
    by default), which the controller cannot use.
    """
    url = params.get('collect_url')
    if not url:
        if not on_controller:
            raise ConnectionOptionsError(
                'collect_url is not set, and the task\'s host is not the controller, so url (%s, the service as the '
                'hypervisor reaches it) cannot be used from the controller: set collect_url / '
                'memdump_acquire_collect_url (or MEMDUMP_COLLECT_URL) to the service\'s address as the controller '
                'reaches it' % (params.get('url') or DEFAULT_URL))
        url = params.get('url') or DEFAULT_URL
    return dict(url=url, token=params.get('collect_token') or params.get('token'),
                timeout=params.get('collect_request_timeout') or DEFAULT_TIMEOUT,
                validate_certs=params.get('collect_validate_certs', True), ca_path=params.get('collect_ca_path'))
