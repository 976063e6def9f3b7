"""Every README example marked ``<!-- readme-test: KIND -->`` runs here, as written, against a real server.

The server is the real ``eca-serve serve`` on the shipped repository (a subprocess, HTTP and gRPC on free
ports); a block's ``localhost:8000`` / ``localhost:8001`` become those ports and nothing else changes. What
is checked is what the README shows: status codes, JSON keys and labels, classes, shapes; never the
numbers that vary between runs. The multi-step workflows (train, quantize, admin) are in
``tests/test_readme_sequences.py``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pytest

from tests.readme_blocks import ROOT, Block, blocks_of, readme_blocks
from tests.reliability.serverproc import ServerProcess, start_server
from tests.serving_utils import free_port

RUN_HERE = {"curl", "python-http", "python-grpc", "serving-json", "setup-serve", "setup-dev"}
RUN_IN_SEQUENCES = {"profile", "admin", "quantize", "zoo-cli", "workflow", "attention-stats", "drift"}  # test_readme_sequences.py
STATUS = "\n__status__ "


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int]]:
    """The shipped repository served as the README's first command does, gRPC on its own free port."""
    grpc_port = free_port()
    log = tmp_path_factory.mktemp("readme") / "server.log"
    process = start_server(ROOT / "models", env={"ECA_SERVE_GRPC_PORT": str(grpc_port)}, log=log)
    try:
        yield process, grpc_port
    finally:
        process.stop()


def localize(code: str, server: tuple[ServerProcess, int]) -> str:
    """The block with the README's ports replaced by the test server's."""
    process, grpc_port = server
    http = process.base.removeprefix("http://")
    return code.replace("localhost:8000", http).replace("localhost:8001", f"127.0.0.1:{grpc_port}")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A scratch folder that sees the repository's examples/ and models/ (``-o attention.png`` lands here)."""
    for name in ("examples", "models"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def run_shell(command: str, cwd: Path, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """``command`` in bash with this interpreter's environment first on PATH (its ``eca-serve`` script)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)


def keys_of(value: Any) -> set[str]:
    """Every key of every object nested in a JSON value."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_of(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_of(v)}
    return set()


def check_shown_output(output: str, shown: list[str]) -> None:
    """The output has the keys and the string values of the JSON the README shows (numbers may differ)."""
    body = json.loads(output)
    for line in shown:
        assert set(re.findall(r'"(\w+)":', line)) <= keys_of(body), (line, output[:400])
        for text in set(re.findall(r':"([^"]+)"', line)) - {"..."}:  # "..." stands for any string
            assert f'"{text}"' in output, (text, output[:400])


def test_every_block_is_marked() -> None:
    """No README block is left out silently: each is run here, in the sequences, or says why it cannot run."""
    blocks = readme_blocks()
    kinds = {b.kind for b in blocks}
    assert kinds <= RUN_HERE | RUN_IN_SEQUENCES | {"not-run"}, kinds - RUN_HERE - RUN_IN_SEQUENCES
    assert all(b.note for b in blocks if b.kind == "not-run"), "a not-run block must say why"
    assert {"curl", "python-http", "python-grpc", "workflow", "admin"} <= kinds


@pytest.mark.parametrize("block", [b for b in readme_blocks() if b.kind == "not-run"], ids=lambda b: b.id)
def test_not_run_blocks_say_why(block: Block) -> None:
    pytest.skip(f"README line {block.line} is not run: {block.note}")


def test_ci_runs_the_readme_dev_command() -> None:
    (block,) = blocks_of("setup-dev")
    (line,) = block.commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert line in ci, f"{line!r} is not a line of .ci/run"
    assert line.endswith("pip install -e \".[dev]\" && pytest") and line.startswith("python3 -m venv .venv")


def test_serving_command_installs_no_torch() -> None:
    """Command 1 installs the base dependencies only (`test_light_server.py` checks the process stays torch-free)."""
    import tomllib

    (block,) = blocks_of("setup-serve")
    (line,) = block.commands()
    parts = [p.strip() for p in line.split("&&")]
    assert parts[0] == "python3 -m venv .venv" and "pip install ." in parts and parts[-1] == "eca-serve serve"
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in base if re.match(r"(torch|torchvision|onnx|safetensors)\b", d)], base


def test_serving_block_is_a_valid_policy() -> None:
    from eca_serve.repository import ServingSpec

    (block,) = blocks_of("serving-json")
    policy = json.loads("{" + block.code + "}")["serving"]
    assert ServingSpec.model_validate(policy).max_batch_size == policy["max_batch_size"]


@pytest.mark.parametrize("block", blocks_of("curl"), ids=lambda b: b.id)
def test_curl_block(block: Block, server: tuple[ServerProcess, int], workdir: Path) -> None:
    """Each command of the block as pasted: curl answers 200 and the JSON the README shows under it."""
    for command, shown in block.steps():
        command = localize(command, server)
        words = shlex.split(command)
        if words[0] == "curl":
            command = command.replace("curl ", f"curl -w {shlex.quote(STATUS + '%{http_code}')} ", 1)
        result = run_shell(command, workdir)
        assert result.returncode == 0, (command, result.stderr[-2000:])
        output = result.stdout
        if words[0] == "curl":
            output, status = output.rsplit(STATUS, 1)
            assert status == "200", (command, output[:400])
        if "-o" in words:
            assert (workdir / words[words.index("-o") + 1]).read_bytes().startswith(b"\x89PNG")
        else:
            json.loads(output)  # every other example prints a JSON body
        if shown:
            check_shown_output(output, shown)


def run_python_block(block: Block, server: tuple[ServerProcess, int], monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Executes the block (cwd = repository root); returns (block line, text) of every ``print`` call."""
    monkeypatch.chdir(ROOT)
    printed: list[tuple[int, str]] = []

    def record(*args: Any, **_: Any) -> None:
        frame = sys._getframe(1)
        printed.append((frame.f_lineno, " ".join(str(a) for a in args)))

    exec(compile(localize(block.code, server), f"README.md:{block.line}", "exec"), {"print": record, "__name__": "readme"})
    return printed


@pytest.mark.parametrize("block", blocks_of("python-http") + blocks_of("python-grpc"), ids=lambda b: b.id)
def test_tritonclient_block(block: Block, server: tuple[ServerProcess, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """The block runs with the real tritonclient; each ``print`` shows the tuples and ``:index:label`` of its comment."""
    printed = run_python_block(block, server, monkeypatch)
    lines = block.code.splitlines()
    assert len(printed) == sum(line.lstrip().startswith("print(") for line in lines)
    checked = 0
    for lineno, text in printed:
        comment = lines[lineno - 1].partition("  #")[2]
        for expected in re.findall(r"\(\d+(?:, \d+)*\)|:\d+:\w+", comment):
            assert expected in text, (lineno, expected, text[:300])
            checked += 1
        assert text.strip(), lineno
    assert checked >= 2, "the block's comments show a class and a shape"
