"""Suite-wide settings. The tests use tiny models, for which one CPU thread is fastest: a second
thread only adds synchronisation, and on a shared 2-core machine busy-waiting OpenMP threads
made runs many times slower (so wait passively; this must be set before torch is imported)."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory):
    """One complete tiny random model folder (tests/tiny_model_folder.py) for the whole run.
    Read-only: a test that changes files copies it first."""
    from tests.tiny_model_folder import build
    return build(tmp_path_factory.mktemp("tiny") / "model")
