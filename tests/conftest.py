import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tokenizer():
    from factories import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def serve_artifact(tmp_path_factory):
    """A tiny artifact (fp32 servable, int8 not servable) shared by the runtime and serving tests."""
    from serve_artifacts import build_artifact

    return build_artifact(tmp_path_factory.mktemp("serve-artifact"))
