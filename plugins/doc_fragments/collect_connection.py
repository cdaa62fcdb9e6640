# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment(object):

    # The controller-side connection options (argument spec: plugins/module_utils/_connection_options.py,
    # COLLECT_OPTIONS): the service as the controller reaches it.
    DOCUMENTATION = r'''
options:
  collect_url:
    description:
      - Base URL of the memdump service as the B(controller) reaches it, for example
        V(https://hv01.example.com:5001).
      - If not set, the controller's environment variable E(MEMDUMP_COLLECT_URL) is used.
      - If neither is set, the host-side option C(url) is used only when the task's host is the controller itself
        (connection C(local), for example C(localhost)); for any other host the task fails and asks for
        this option (role variable C(memdump_acquire_collect_url)), because C(url) is the service as the
        hypervisor reaches it (its loopback by default).
    type: str
  collect_token:
    description:
      - Bearer token for the controller-side requests.
      - If not set, the controller's environment variable E(MEMDUMP_COLLECT_TOKEN), else the option C(token).
    type: str
  collect_request_timeout:
    description:
      - Timeout in seconds of each controller-side HTTP request (also of each read of a download).
      - If not set, the controller's environment variable E(MEMDUMP_COLLECT_TIMEOUT) is used.
    type: float
    default: 30
  collect_validate_certs:
    description: Whether to validate the service's TLS certificate when O(collect_url) is C(https://).
    type: bool
    default: true
  collect_ca_path:
    description:
      - PEM file B(on the controller) of the CA certificate(s) that signed the service's TLS certificate.
      - If not set, the controller's environment variable E(MEMDUMP_COLLECT_CA_PATH) is used.
    type: path
notes:
  - The controller-side options and their environment variables are read on the controller.
'''
