# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment(object):

    # The connection options of every module (argument spec: plugins/module_utils/_module.py).
    DOCUMENTATION = r'''
options:
  url:
    description:
      - Base URL of the memdump service, for example V(https://hv01.example.com:5001).
      - If not set, the environment variable E(MEMDUMP_SERVICE_URL) is used.
    type: str
    default: http://127.0.0.1:5001
  token:
    description:
      - Bearer token of the memdump service (the content of its C(--token-file)).
      - Needed when the service runs with a token; a service without one ignores it.
      - If not set, the environment variable E(MEMDUMP_SERVICE_TOKEN) is used.
    type: str
  timeout:
    description:
      - Timeout in seconds of each HTTP request to the service (not of the whole task).
      - If not set, the environment variable E(MEMDUMP_SERVICE_TIMEOUT) is used.
      - The alias O(request_timeout) means the same in every module of the collection; in
        M(vmforensics.memdump.memdump_wait) O(timeout) is the whole-wait deadline instead, so set
        O(request_timeout) rather than O(timeout) in C(module_defaults) for the whole group.
    type: float
    default: 30
    aliases: [request_timeout]
  validate_certs:
    description:
      - Whether to validate the service's TLS certificate when O(url) is C(https://).
      - Set to V(false) only for a service with a self-signed certificate on a trusted network.
    type: bool
    default: true
  ca_path:
    description:
      - PEM file of the CA certificate(s) that signed the service's TLS certificate.
    type: path
'''

    # memdump_wait: the per-request timeout keeps its unambiguous name only.
    WAIT = r'''
options:
  request_timeout:
    description:
      - Timeout in seconds of each HTTP request to the service (a long-poll request adds the time it
        asks the service to hold the answer).
      - If not set, the environment variable E(MEMDUMP_SERVICE_TIMEOUT) is used.
      - This is the connection option that M(vmforensics.memdump.memdump_trigger) and
        M(vmforensics.memdump.memdump_info) call O(vmforensics.memdump.memdump_trigger#module:timeout).
    type: float
    default: 30
'''
