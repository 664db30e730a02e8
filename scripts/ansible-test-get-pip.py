"""Offline stand-in for the get-pip.py bootstrap script that ansible-test downloads.

ansible-test fetches get-pip.py from a host these build machines cannot reach. This
script does the same job from the standard library: it installs pip with ensurepip,
then installs the requested packages (e.g. pip==24.2) from the package index.
scripts/setup.sh puts it where ansible-test caches get-pip.py.
"""

import ensurepip
import subprocess
import sys

GET_PIP_ONLY_OPTIONS = {"--no-setuptools", "--no-wheel"}

ensurepip.bootstrap(upgrade=True)
args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY_OPTIONS]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--upgrade"] + args))
