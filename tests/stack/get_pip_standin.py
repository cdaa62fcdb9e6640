"""Stand-in for ansible-test's downloaded get-pip script (its host is not reachable here).

ansible-test runs this file with pip's install arguments (for example ``pip==24.2 --no-setuptools``);
it installs the pip wheel that ``stack.sh install`` put next to it, fetched from PyPI.
"""
import glob
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
wheels = sorted(glob.glob(os.path.join(here, 'pip-*-py3-none-any.whl')))
if not wheels:
    sys.exit('no pip wheel in %s: run tests/stack/stack.sh install' % here)
wheel = wheels[-1]
args = [a for a in sys.argv[1:] if a not in ('--no-setuptools', '--no-wheel')]
args = [wheel if a.startswith('pip==') else a for a in args]
sys.path.insert(0, wheel)
from pip._internal.cli.main import main  # noqa: E402  pylint: disable=wrong-import-position

sys.exit(main(['install', '--no-warn-script-location'] + args))
