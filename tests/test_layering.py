"""One direction between the packages: calib/ may import pipeline/, and pipeline/'s library modules never import
calib/ (only the CLI layer, pipeline/commands/, joins the two); tools/ is imported by nothing."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    """Top-level package names a module imports, wherever in the module the import stands."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_pipeline_library_modules_never_import_calib():
    offenders = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "pipeline").rglob("*.py"))
                 if "commands" not in p.relative_to(ROOT / "pipeline").parts and "calib" in _imports(p)]
    assert not offenders, f"import calib only from pipeline/commands/: {offenders}"


def test_nothing_in_the_product_imports_tools():
    offenders = [str(p.relative_to(ROOT)) for folder in ("pipeline", "calib")
                 for p in sorted((ROOT / folder).rglob("*.py")) if "tools" in _imports(p)]
    assert not offenders, f"tools/ is for developers; the package must not need it: {offenders}"


def test_the_cli_parser_loads_no_heavy_library():
    """`tokengate --help` and every argument error build the whole parser: it must not wait for PyTorch, ONNX or
    ONNX Runtime to load (each command imports them when it runs)."""
    import subprocess
    import sys

    probe = ("import sys; from pipeline.cli import build_parser; build_parser(); "
             "print(','.join(m for m in ('torch', 'onnx', 'onnxruntime', 'timm') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "", f"building the CLI parser imported {loaded.stdout.strip()}"
