# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Runs an action plugin's real ``run()`` with a real Task, PlayContext and connection plugin."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ansible.parsing.dataloader import DataLoader
from ansible.playbook.play_context import PlayContext
from ansible.playbook.task import Task
from ansible.plugins.loader import connection_loader
from ansible.template import Templar


@pytest.fixture
def run_action(monkeypatch):
    """``run_action(ActionModule, args, check_mode=False, connection='local', task_vars=None)``: the result dict."""
    for name in list(os.environ):
        if name.startswith('MEMDUMP_'):
            monkeypatch.delenv(name, raising=False)

    def run(cls, args, check_mode=False, connection='local', task_vars=None, prepare=None):
        task = Task()
        task.args = dict(args)
        task.check_mode = check_mode
        play_context = PlayContext()
        play_context.check_mode = check_mode
        conn = connection_loader.get(connection, play_context, os.devnull)
        loader = DataLoader()
        action = cls(task, conn, play_context, loader, Templar(loader=loader), None)
        action._load_name = 'vmforensics.memdump.' + cls.NAME  # set by the plugin loader in a real run
        if prepare:
            prepare(action)
        result = action.run(task_vars=dict({'inventory_hostname': 'hv01'}, **(task_vars or {})))
        json.dumps(result)  # what a task returns must serialise
        return result

    return run


@pytest.fixture
def signing(tmp_path):
    """An ed25519 key (no passphrase) in ``tmp_path/home/.ssh`` and an allowed-signers file for it."""
    home = tmp_path / 'home'
    (home / '.ssh').mkdir(parents=True)
    key = home / '.ssh' / 'custody'
    subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'custody@test', '-f', str(key)], check=True)
    allowed = tmp_path / 'allowed_signers'
    allowed.write_text('custody@test namespaces="memdump-custody" %s' % (home / '.ssh' / 'custody.pub').read_text())
    return {'home': str(home), 'key': str(key), 'allowed': str(allowed)}
