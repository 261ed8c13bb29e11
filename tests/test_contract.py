"""The TokenSelect contract is spelled once in Python (pipeline/contract.py); the C++ plugin's constants, the
plugin's README and the ONNX schema agree with it."""
from __future__ import annotations

import re
from pathlib import Path

from onnx import defs

from pipeline import contract
from pipeline.export import schema

ROOT = Path(__file__).resolve().parent.parent
HEADER = ROOT / "plugins" / "tokenSelect" / "tokenSelectPlugin.h"
README = ROOT / "plugins" / "tokenSelect" / "README.md"


def _constant(name: str) -> str:
    match = re.search(rf'constexpr char const\* {name} = "([^"]*)";', HEADER.read_text())
    assert match, f"{name} is not declared in {HEADER}"
    return match.group(1)


def test_plugin_constants_match_the_contract():
    assert _constant("kTOKEN_SELECT_NAME") == contract.OP_TYPE
    assert _constant("kTOKEN_SELECT_NAMESPACE") == contract.DOMAIN
    assert _constant("kTOKEN_SELECT_VERSION") == str(contract.VERSION)


def test_plugin_readme_names_the_contract():
    text = README.read_text()
    assert (f"name `{contract.OP_TYPE}`, version `{contract.VERSION}`, namespace `{contract.DOMAIN}`") in text
    for index, name in enumerate(contract.INPUTS):
        assert re.search(rf"\| {index} \| `{name}` \|", text), f"input {index} ({name}) is not in {README.name}"
    for index, name in enumerate(contract.OUTPUTS):
        assert re.search(rf"\| {index} \| `{name}` \|", text), f"output {index} ({name}) is not in {README.name}"
    for name in contract.ATTRIBUTES:
        assert f"`{name}`" in text


def test_onnx_schema_follows_the_contract():
    schema.register_schema()
    op = defs.get_schema(contract.OP_TYPE, contract.VERSION, contract.DOMAIN)
    assert tuple(p.name for p in op.inputs) == contract.INPUTS
    assert tuple(p.name for p in op.outputs) == contract.OUTPUTS
    assert set(op.attributes) == set(contract.ATTRIBUTES)


def test_the_domain_is_spelled_once_in_python():
    """No product module beside pipeline/contract.py writes the domain or op type as a string literal (the CLI's
    program name and the checkpoints' metadata key are other things called tokengate)."""
    literal = re.compile(r'(["\'])(tokengate|TokenSelect)\1')
    offenders = []
    for folder in ("pipeline", "calib"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "contract.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if literal.search(line) and "prog=" not in line and "meta" not in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
