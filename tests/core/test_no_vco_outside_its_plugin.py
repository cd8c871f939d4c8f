"""V-Co lives in vco_plugin only: jit_core and slurm hold no V-Co knowledge in code (no import of vco_plugin, no
identifier or string value naming V-Co, its stream or its encoders). Docstrings and help texts may name V-Co as
an example; a value the code compares or passes may not. The import-linter contracts forbid the imports too."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VCO_VALUE = re.compile(r"^(vco(-\w+)?|vco_plugin(\..*)?|feature|dino|dinov2|efficientnet_lite0)$", re.IGNORECASE)
VCO_NAME = re.compile(r"vco|dinov2", re.IGNORECASE)


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def vco_knowledge(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    docs, found = _docstrings(tree), []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            found += [f"line {node.lineno}: imports {n}" for n in names if n.startswith("vco_plugin")]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if VCO_VALUE.match(node.value):
                found.append(f"line {node.lineno}: the value {node.value!r}")
        elif isinstance(node, ast.Name) and VCO_NAME.search(node.id):
            found.append(f"line {node.lineno}: the name {node.id}")
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and VCO_NAME.search(node.name):
            found.append(f"line {node.lineno}: the definition {node.name}")
    return found


def test_no_vco_knowledge_in_jit_core_or_slurm():
    problems = []
    for package in ("jit_core", "slurm"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            problems += [f"{rel} {what}" for what in vco_knowledge(path)]
    assert not problems, "V-Co knowledge outside vco_plugin:\n" + "\n".join(problems)


def test_the_check_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""Mentions V-Co and vco in prose: fine."""\nfrom vco_plugin.features import x\n'
                   'VCO_NAMES = ("vco",)\nstream = "feature"\n')
    found = vco_knowledge(bad)
    assert any("imports vco_plugin.features" in f for f in found) and any("the name VCO_NAMES" in f for f in found)
    assert any("the value 'vco'" in f for f in found) and any("the value 'feature'" in f for f in found)
    assert not any("line 1" in f for f in found)                       # the docstring may say V-Co
