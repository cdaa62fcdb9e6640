# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment(object):

    # The host-side connection options of every member of the action group (argument spec:
    # plugins/module_utils/_connection_options.py, HOST_OPTIONS).
    DOCUMENTATION = r'''
options:
  url:
    description:
      - Base URL of the memdump service as the libvirt host reaches it, for example V(https://hv01.example.com:5001);
        by default the service on the host's loopback.
      - If not set, the environment variable E(MEMDUMP_SERVICE_URL) is used.
      - The address the controller downloads from is a separate option, C(collect_url), of the
        controller-side plugins; this one can always be set in C(module_defaults) for
        C(group/vmforensics.memdump.memdump).
    type: str
    default: http://127.0.0.1:5001
  token:
    description:
      - Bearer token of the memdump service (the content of its C(--token-file)).
      - Needed when the service runs with a token; a service without one ignores it.
      - If not set, the environment variable E(MEMDUMP_SERVICE_TOKEN) is used.
    type: str
  request_timeout:
    description:
      - Timeout in seconds of each HTTP request to the service, not of the whole task.
      - It means the same in every module of the collection, so it can be set once in
        C(module_defaults) for C(group/vmforensics.memdump.memdump). The deadline of
        M(vmforensics.memdump.memdump_wait) is its own option,
        O(vmforensics.memdump.memdump_wait#module:wait_timeout).
      - If not set, the environment variable E(MEMDUMP_SERVICE_TIMEOUT) is used.
    type: float
    default: 30
  validate_certs:
    description:
      - Whether to validate the service's TLS certificate when O(url) is C(https://).
      - Set to V(false) only for a service with a self-signed certificate on a trusted network.
    type: bool
    default: true
  ca_path:
    description:
      - PEM file of the CA certificate(s) that signed the service's TLS certificate, a path on the
        host where the module runs (the hypervisor).
    type: path
notes:
  - The environment variables E(MEMDUMP_SERVICE_URL), E(MEMDUMP_SERVICE_TOKEN) and
    E(MEMDUMP_SERVICE_TIMEOUT) are read by the module, that is on the managed host where it runs (the
    hypervisor, or the controller with C(delegate_to=localhost)), not on the controller. The
    collection's roles read the controller's environment and pass the values as options.
'''
