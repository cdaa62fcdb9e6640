# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The collection's one line-protocol writer and its InfluxDB 2.x write over ansible's HTTP stack."""

from __future__ import annotations

import http.server
import json
import random
import threading

import pytest

from ansible_collections.vmforensics.memdump.plugins.module_utils import _influxdb
from ansible_collections.vmforensics.memdump.plugins.module_utils._influxdb import InfluxDBError, line, write_v2

TOKEN = 'tok-v2-s3cret'


def parse(text):
    """A reader of one point of line protocol as InfluxDB's parser reads it: (measurement, tags, fields, time).
    A backslash escapes the next character where it is special; line breaks come back from their escape
    sequences; a quoted string field may hold anything (InfluxDB's line scanner ends a line only outside
    quotes). Whatever follows the timestamp makes int() fail: a second point cannot hide in the text."""
    breaks = {'n': '\n', 'r': '\r', 't': '\t'}

    def scan(pos, stops, specials):
        out = ''
        while pos < len(text) and text[pos] not in stops:
            if text[pos] == '\\' and pos + 1 < len(text) and (text[pos + 1] in specials or text[pos + 1] in breaks):
                out += breaks.get(text[pos + 1], text[pos + 1]) if text[pos + 1] in breaks else text[pos + 1]
                pos += 2
                continue
            out += text[pos]
            pos += 1
        return out, pos

    measurement, pos = scan(0, ', ', ', ')
    tags = {}
    while text[pos] == ',':
        key, pos = scan(pos + 1, '=', ',= ')
        value, pos = scan(pos + 1, ', ', ',= ')
        tags[key] = value
    fields = {}
    pos += 1
    while True:
        key, pos = scan(pos, '=', ',= ')
        pos += 1
        if text[pos] == '"':
            value, pos = '', pos + 1
            while text[pos] != '"':
                if text[pos] == '\\' and text[pos + 1] in '"\\':
                    pos += 1
                value += text[pos]
                pos += 1
            pos += 1
        else:
            raw, pos = scan(pos, ', ', '')
            value = (int(raw[:-1]) if raw.endswith('i') else raw == 'true' if raw in ('true', 'false') else float(raw))
        fields[key] = value
        if text[pos] == ' ':
            break
        pos += 1
    return measurement, tags, fields, int(text[pos + 1:])


def test_known_lines():
    assert line('memdump', {'host': 'hv01', 'vm': 'web 01,a=b', 'label': None, 'empty': ''},
                {'sha256': 'f' * 4, 'size_bytes': 5, 'paused_sec': 0.25, 'whole': 2.0, 'ok': True, 'gone': None,
                 'nan': float('nan'), 'message': 'said "hi" \\ bye'}, 7) == (
        'memdump,host=hv01,vm=web\\ 01\\,a\\=b message="said \\"hi\\" \\\\ bye",ok=true,paused_sec=0.25,sha256="ffff",'
        'size_bytes=5i,whole=2 7')
    # A value ending in a backslash cannot escape the separator after it.
    assert line('m', {'vm': 'x\\'}, {'f': 1}, 1) == 'm,vm=x\\  f=1i 1'
    # A line break in a name or tag is its escape sequence: one point stays one line.
    assert line('m\n', {'vm': 'a\nb\r\tc'}, {'f': 1}, 1) == 'm\\n,vm=a\\nb\\r\\tc f=1i 1'


def test_a_point_without_fields_is_refused():
    with pytest.raises(ValueError):
        line('m', {'vm': 'x'}, {'gone': None}, 1)


# Every character class that matters to line protocol, and some that do not.
ALPHABET = 'aZ09_-.:' + ' ,="\\' + 'é€\u2028\x85\x00\x1f'


def random_text(rng):
    return ''.join(rng.choice(ALPHABET) for dummy in range(rng.randint(1, 10)))


def random_value(rng):
    kind = rng.randrange(4)
    if kind == 0:
        return random_text(rng) + rng.choice(['', '\n', '\r', '\t'])
    if kind == 1:
        return rng.randint(-2 ** 63, 2 ** 63 - 1)
    if kind == 2:
        return rng.random() < 0.5
    return rng.uniform(-1e20, 1e20) if rng.random() < 0.5 else float(rng.randint(-1000, 1000))


@pytest.mark.parametrize('seed', range(5))
def test_every_point_reads_back_as_written(seed):
    """2000 random points each (names, tags and string fields with every special character, integers to 2^63,
    floats, booleans): parsed back as InfluxDB's parser reads line protocol, each is what was written."""
    rng = random.Random(seed)
    for dummy in range(2000):
        safe = [random_text(rng) for dummy2 in range(9)]
        safe = [text for text in safe if not text.endswith('\\')]  # (a trailing backslash gets a space: see above)
        if len(safe) < 5:
            continue
        measurement, tags = safe[0], dict(zip(safe[1:3], safe[3:5]))
        fields = dict((random_text(rng).rstrip('\\') or 'f', random_value(rng)) for dummy2 in range(rng.randint(1, 4)))
        at = rng.randint(0, 2 ** 62)
        text = line(measurement, tags, fields, at)
        # One point: a line break may only stand inside a quoted string field, where InfluxDB keeps it.
        got = parse(text)
        assert got[0] == measurement and got[1] == tags and got[3] == at, (text, measurement, tags)
        assert got[2] == fields, (text, fields)


class FakeInfluxDB2(http.server.BaseHTTPRequestHandler):
    """A fake InfluxDB 2.x write API (no InfluxDB 2 can run here): records writes, answers as told."""

    requests = []
    status = 204
    body = b''

    def do_POST(self):  # noqa: N802
        data = self.rfile.read(int(self.headers.get('Content-Length') or 0)).decode()
        FakeInfluxDB2.requests.append((self.path, dict(self.headers), data))
        self.send_response(FakeInfluxDB2.status)
        self.send_header('Content-Length', str(len(FakeInfluxDB2.body)))
        self.end_headers()
        self.wfile.write(FakeInfluxDB2.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def influxdb2():
    FakeInfluxDB2.requests, FakeInfluxDB2.status, FakeInfluxDB2.body = [], 204, b''
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), FakeInfluxDB2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield 'http://127.0.0.1:%d' % server.server_address[1]
    server.shutdown()
    server.server_close()


def test_v2_write_goes_over_the_one_http_stack(influxdb2):
    write_v2(influxdb2 + '/', 'secops', 'forensics', TOKEN, ['m f=1i 1', 'm f=2i 2'], timeout=2)
    path, headers, body = FakeInfluxDB2.requests[0]
    assert path == '/api/v2/write?org=secops&bucket=forensics&precision=ns'
    assert headers['Authorization'] == 'Token ' + TOKEN and body == 'm f=1i 1\nm f=2i 2\n'


@pytest.mark.parametrize('status, words', [(422, 'partial write'), (401, 'check token'), (404, 'do org'), (503, 'HTTP 503')])
def test_v2_errors_name_the_status_and_never_the_token(influxdb2, status, words):
    FakeInfluxDB2.status = status
    FakeInfluxDB2.body = json.dumps({'code': 'x', 'message': 'partial write: token %s refused' % TOKEN}).encode()
    with pytest.raises(InfluxDBError) as caught:
        write_v2(influxdb2, 'secops', 'forensics', TOKEN, ['m f=1i 1'], timeout=2)
    assert caught.value.status == status and words in str(caught.value) and TOKEN not in str(caught.value)


def test_v2_needs_its_settings():
    with pytest.raises(InfluxDBError, match='needs url, org, bucket and token'):
        write_v2('http://127.0.0.1:9', None, 'b', TOKEN, ['m f=1i 1'])


def test_no_influxdb_library_is_imported():
    with open(_influxdb.__file__, encoding='utf-8') as handle:
        assert 'influxdb_client' not in handle.read()
