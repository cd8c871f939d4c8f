"""Citations a reader can follow: code, tests and docs cite the papers (arXiv 2511.13720, 2603.16792) or the
repository's own docs (docs/official-code.md for what only the official code says), never a file outside the
repository or a path on some machine."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "runs", "reports", "node_modules", "__pycache__"}
SUFFIXES = {".py", ".md", ".toml", ".sh", ".cfg", ".ini", ".txt", ".yaml", ".yml"}
# spelled in pieces so that this file does not match itself
OUTSIDE = re.compile("|".join([
    r"shared/" + "spec",                               # the development notes of the project's machines
    r"\.\./" + "shared",
    r"\bspec " + r"(?:[a-z_]+\.md|section|§)",         # a notes file by name, section or paragraph sign
    r"\b(?:jit|vco|evaluation|slurm|assets)\.md " + "§",
    r"(?<![\w.])/" + r"work/", r"(?<![\w.])/" + r"root/",   # absolute paths of development machines
]))


def repository_files():
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts[:-1]):
            continue
        if path.is_file() and path.suffix in SUFFIXES:
            yield rel, path


def test_no_reference_outside_the_repository():
    found = []
    for rel, path in repository_files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{rel}:{n}: {line.strip()[:120]}")
    assert not found, "cite the paper or docs/official-code.md instead:\n" + "\n".join(found)


def test_the_pattern_catches_what_it_must():
    sign = "\u00a7"
    for bad in ("see shared/" + "spec/vco.md", "(spec " + "vco.md " + sign + "6)", "spec " + "section 9",
                "(spec " + sign + "5)", "vco.md " + sign + "2.3", "/" + "work/shared/fixtures", "cd /" + "root/x",
                "../" + "shared/fixtures"):
        assert OUTSIDE.search(bad), bad
    for fine in ("docs/official-code.md#batches", "arXiv 2603.16792", "--run-dir /shared/runs/b16", "jit_core/study/spec.py",
                 "hookspec", "runs/work/x"):
        assert not OUTSIDE.search(fine), fine


def test_every_docs_link_to_official_code_names_an_anchor_that_exists():
    page = (ROOT / "docs" / "official-code.md").read_text()
    anchors = set(re.findall(r'<a id="([\w-]+)"></a>', page))
    anchors |= {re.sub(r"[^\w -]", "", h).strip().lower().replace(" ", "-") for h in re.findall(r"^#+ (.+)$", page, re.M)}
    missing = []
    for rel, path in repository_files():
        for anchor in re.findall(r"official-code\.md#([\w-]+)", path.read_text(errors="replace")):
            if anchor not in anchors:
                missing.append(f"{rel}: #{anchor}")
    assert not missing, missing
