"""The README's custom-handler example, run as written: its files, its shell lines up to
``torchferry serve``, and its answer (through the handler and runtime, without a server)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

import torchferry.cli as cli
from torchferry.archive import ModelStore
from torchferry.errors import UntrustedCode
from torchferry.handlers import load_handler
from torchferry.handlers.base import HandlerRequest
from torchferry.runtimes import load_runtime

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Your own handler"


def section_blocks() -> list[tuple[str, str]]:
    """The section's fenced blocks as (language, text)."""
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    body = text[start : end if end != -1 else len(text)]
    return re.findall(r"```(\w+)\n(.*?)```", body, flags=re.DOTALL)


def shell_commands(script: str) -> list[str]:
    """Logical lines (backslash continuations joined) of a shell block."""
    return [line.strip() for line in script.replace("\\\n", " ").splitlines() if line.strip()]


def test_readme_custom_handler_example(tmp_path, monkeypatch):
    blocks = section_blocks()
    languages = [language for language, _ in blocks]
    assert languages == ["python", "python", "sh", "json"]
    for _, code in blocks[:2]:
        name = re.match(r"# (\S+\.py)", code)
        assert name, "each Python block starts with '# FILE.py'"
        (tmp_path / name.group(1).rstrip(":")).write_text(code)
    commands = shell_commands(blocks[2][1])

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "COMMANDS", ["export_cmd"])  # serving may be mid-refactor
    curl = None
    for command in commands:
        argv = shlex.split(command)
        if argv[:2] == ["torchferry", "serve"]:
            assert "--trust-code" in argv
        elif argv[0] == "torchferry":
            assert cli.main(argv[1:]) == 0
        elif argv[0] == "curl":
            curl = argv
        else:
            subprocess.run(["bash", "-c", command], check=True, cwd=tmp_path)
    assert curl is not None

    archive = ModelStore(tmp_path / "model-store").open("sentiment")
    assert archive.manifest.handler.name == "code/text_handler.py:BagOfWords"
    assert {"code/text_handler.py", "vocab.json"} <= set(archive.manifest.files)
    with pytest.raises(UntrustedCode, match="--trust-code"):
        load_handler(archive, trust_code=False)

    # what the server does for the curl line: handler, model, handler
    payload = curl[curl.index("-d") + 1]
    handler = load_handler(archive, trust_code=True)
    inputs, state = handler.preprocess(
        HandlerRequest(body=payload.encode(), content_type="application/json")
    )
    runtime = load_runtime(archive, threads=1)
    try:
        result = handler.postprocess(runtime.infer(inputs), state)
    finally:
        runtime.close()
    expected = json.loads(blocks[3][1])
    assert expected["model_name"] == "sentiment" and expected["model_version"] == "1"
    assert json.loads(json.dumps(result)) == expected["result"]
