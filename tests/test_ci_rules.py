"""CI never hides a missing requirement: with CI=true a missing Mosquitto fails the run; locally it skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

PROBE = '''
def test_needs_a_broker(mosquitto):
    assert mosquitto.port > 0
'''


def _run_probe(tmp_path, ci: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = dict(os.environ, CI=ci, INFANTINO_MOSQUITTO=str(tmp_path / "no-such-mosquitto"),
               PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(TESTS),
                           "--confcutdir", str(TESTS), "-c", str(TESTS.parent / "pyproject.toml"),
                           "-p", "conftest", str(tmp_path / "test_probe.py")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=TESTS)


def test_a_missing_broker_fails_under_ci_and_skips_locally(tmp_path):
    ci = _run_probe(tmp_path, "true")
    assert ci.returncode == 1 and "CI=true and a requirement is missing: Mosquitto is not installed" in ci.stdout, \
        ci.stdout[-2000:]
    local = _run_probe(tmp_path, "")
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout[-2000:]


BROWSER_PROBE = '''
def test_needs_a_browser(chrome):
    assert chrome is not None
'''


def test_a_missing_browser_fails_under_ci_and_skips_locally(tmp_path):
    (tmp_path / "test_probe.py").write_text(BROWSER_PROBE)
    for ci, code, needle in (("true", 1, "CI=true and a requirement is missing: Chromium or its driver"),
                             ("", 0, "1 skipped")):
        env = dict(os.environ, CI=ci, INFANTINO_CHROMEDRIVER=str(tmp_path / "no-such-chromedriver"),
                   PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(TESTS),
                            "--confcutdir", str(TESTS), "-c", str(TESTS.parent / "pyproject.toml"), "-p", "conftest",
                            str(tmp_path / "test_probe.py")], capture_output=True, text=True, env=env, timeout=300,
                           cwd=TESTS)
        assert r.returncode == code and needle in r.stdout, r.stdout[-2000:]
