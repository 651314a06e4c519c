import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
SMOLLM2 = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def nibble_bin():
    path = pathlib.Path(os.environ.get("NIBBLE_BIN", ROOT / "build" / "nibble"))
    if not path.is_absolute():
        path = ROOT / path
    assert path.exists(), f"{path} missing: run scripts/setup.sh first"
    return str(path)
