"""Makes the repo importable and provides a small generated data set."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import make_sample_data  # noqa: E402  (needs the path above)
from helpers import SAMPLE_DATA_SETTINGS  # noqa: E402


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> str:
    """Folder with frame/ and video/ shards written by make_sample_data."""
    folder = str(tmp_path_factory.mktemp("sample_data"))
    make_sample_data.write_sample_data(folder, **SAMPLE_DATA_SETTINGS)
    return folder
