"""Shared fixtures. Each part keeps its own fixtures in tests/fixtures_<part>.py, loaded here as plugins."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ci_skip import missing

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _load_part_fixtures() -> None:
    """Pull every fixture defined in tests/fixtures_*.py into this conftest's namespace."""
    import importlib
    import sys

    here = Path(__file__).parent
    if str(here) not in sys.path:
        sys.path.insert(0, str(here))
    for f in sorted(here.glob("fixtures_*.py")):
        mod = importlib.import_module(f.stem)
        for name, obj in vars(mod).items():
            if not name.startswith("_") and name not in globals():
                globals()[name] = obj


_load_part_fixtures()


@pytest.fixture(scope="session")
def keypair(tmp_path_factory):
    """An Ed25519 key pair (private_path, public_path, private_key, public_key) for signing in tests."""
    from infantino.runtime.contract import signing

    d = tmp_path_factory.mktemp("keys")
    signing.generate_keypair(d / "signing.key", d / "signing.pub")
    return d / "signing.key", d / "signing.pub", signing.load_private_key(d / "signing.key"), signing.load_public_key(d / "signing.pub")


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory):
    """One local MLflow store (SQLite + artifact folder) for the whole session: migrations cost ~25 s once."""
    d = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    os.environ["INFANTINO_TEST_ARTIFACT_ROOT"] = str(d / "artifacts")
    return uri


@pytest.fixture(scope="session")
def real_faces() -> dict[str, np.ndarray]:
    """Real photographs shipped inside packages, as BGR uint8: scikit-image's astronaut, matplotlib's grace_hopper."""
    import cv2
    import matplotlib
    from skimage import data

    astronaut = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    gh = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    grace = cv2.imread(str(gh))
    if grace is None:
        missing(f"matplotlib sample image missing: {gh}")
    return {"astronaut": astronaut, "grace_hopper": grace}
