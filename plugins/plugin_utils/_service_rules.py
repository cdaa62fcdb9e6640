# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What the service publishes in ``/health``: its optional features and the rules the collection
must agree with (label pattern, format -> file extension). Asked, never copied.

For internal collection use only: this is not a public API and may change without notice.
"""

from __future__ import annotations

import copy

from ansible_collections.vmforensics.memdump.plugins.module_utils._client import (
    MemdumpAuthError, MemdumpConnectionError, MemdumpError, MemdumpTLSError)
from ansible_collections.vmforensics.memdump.plugins.plugin_utils._custody_names import DEFAULT_RULES

# The /health feature under which the service keeps custody heads (custody witness).
WITNESS_FEATURES = ('custody_heads', 'custody_head')


class ServiceInfo(object):
    """``features`` (a frozenset) and ``rules`` (a dict) of one service; ``published`` says whether the
    rules came from the service (False: an older service, its documented defaults are used)."""

    def __init__(self, features, rules, published):
        self.features = features
        self.rules = rules
        self.published = published

    @property
    def keeps_custody_heads(self):
        return any(f in self.features for f in WITNESS_FEATURES)


def service_info(client):
    """Asks ``/health``. Connection, TLS and token errors are raised; a service without ``/health`` or
    without ``rules`` gets the documented defaults."""
    try:
        health = client.health()
    except (MemdumpConnectionError, MemdumpTLSError, MemdumpAuthError):
        raise
    except MemdumpError:
        health = {}
    features = health.get('features') if isinstance(health.get('features'), list) else []
    features = frozenset(f for f in features if isinstance(f, str))
    published = health.get('rules')
    if not isinstance(published, dict):
        return ServiceInfo(features, copy.deepcopy(DEFAULT_RULES), False)
    rules = copy.deepcopy(DEFAULT_RULES)
    for key in ('vm_name', 'label', 'formats'):
        if isinstance(published.get(key), dict):
            rules[key] = published[key]
    return ServiceInfo(features, rules, True)


def default_info():
    """For a task that does not contact the service (memdump_collect download=false)."""
    return ServiceInfo(frozenset(), copy.deepcopy(DEFAULT_RULES), False)
