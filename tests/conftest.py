import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("SML_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Models built by tests (tiny-random) go to one per-session cache, never the user's."""
    if "SML_CACHE_DIR" not in os.environ or not os.environ.get("SML_TEST_KEEP_CACHE"):
        monkeypatch.setenv("SML_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sml-cache"))


@pytest.fixture
def data_dir():
    if not (SHARED_DATA / "splits").is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA} (set SML_DATA_DIR)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny():
    from selfmotivated.tiny import build_tiny_model

    return build_tiny_model()


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread when the cores are shared (modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A saved tiny-random model folder, shared by the training tests."""
    from selfmotivated.tiny import save_tiny_random

    return str(save_tiny_random(tmp_path_factory.mktemp("tiny") / "model"))
