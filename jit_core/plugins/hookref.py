"""The hook reference of ``docs/plugins.md``, rendered as Markdown from the docstrings of :mod:`jit_core.hookspecs`.

- :func:`hook_names`: the hooks, in the order they are defined (= documented).
- :func:`hook_reference_markdown`: the reference (a table, then one section per hook).
- :func:`update_hook_reference` / :func:`documented_hook_reference`: rewrite / read the part of a
  Markdown file between :data:`HOOKS_START` and :data:`HOOKS_END`.

Command line: ``python -m jit_core.plugins.hookref [--update-docs FILE | --check-docs FILE]`` (run
``python -m jit_core.plugins.hookref --update-docs docs/plugins.md`` after editing ``hookspecs.py``;
``tests/test_plugins.py`` checks that the docs are in sync).
"""
from __future__ import annotations

import inspect
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from jit_core import durable, hookspecs

HOOKS_START = "<!-- hooks:start -->"
HOOKS_END = "<!-- hooks:end -->"


def hook_names() -> list[str]:
    """The hooks of :mod:`jit_core.hookspecs`, in the order they are defined (= documented)."""
    return [name for name, fn in vars(hookspecs).items()
            if name.startswith("jit_") and callable(fn) and hasattr(fn, f"{hookspecs.PROJECT}_spec")]


def _rst_to_markdown(text: str) -> str:
    """The small subset of reST the hookspec docstrings use: ``literal`` and ``Example::`` blocks."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::"):
            head = line.rstrip()[:-2].rstrip()
            out.append(head + ":" if head and not head.endswith(":") else head)
            i += 1
            while i < len(lines) and not lines[i].strip():
                i += 1
            block = []
            indent = None
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > 0):
                if lines[i].strip():
                    ind = len(lines[i]) - len(lines[i].lstrip())
                    indent = ind if indent is None else min(indent, ind)
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            out += ["", "```python"] + [b[indent or 0:] for b in block] + ["```", ""]
            continue
        out.append(re.sub(r"``([^`]+)``", r"`\1`", line))
        i += 1
    return "\n".join(out).strip()


def _how_called(name: str, opts: dict) -> tuple[str, str]:
    """(short kind, one-line note) of how the core calls a hook (:data:`jit_core.hookspecs.PER_STREAM`, ...)."""
    if name in hookspecs.PER_STREAM:
        return "per stream", ("called only on the plugin that added the stream; the pixel stream, and a None "
                              "answer, get the core's default")
    if name in hookspecs.ONE_PLUGIN:
        return "one plugin", ("at most one enabled plugin may answer (two fail at start-up naming both); "
                              "None everywhere = the core's default")
    if opts.get("firstresult"):
        return "firstresult", "the first non-None result wins; if every plugin returns None the core's default applies"
    return "every plugin", "each plugin's implementation is called (in `--plugin` order) and the results are combined"


def hook_reference_markdown() -> str:
    """The hook reference (Markdown) rendered from the hookspec docstrings, for ``docs/plugins.md``."""
    rows, sections = [], []
    for name in hook_names():
        fn = getattr(hookspecs, name)
        opts = getattr(fn, f"{hookspecs.PROJECT}_spec")
        sig = f"{name}({', '.join(inspect.signature(fn).parameters)})"
        doc = inspect.cleandoc(fn.__doc__ or "")
        first = re.sub(r"\*\*[^*]+\*\*\s*", "", doc.split("\n\n")[0].replace("\n", " "))
        first = re.sub(r"``([^`]+)``", r"`\1`", first)
        kind, note = _how_called(name, opts)
        rows.append(f"| [`{name}`](#{name}) | {kind} | {first} |")
        sections.append(f"### {name}\n\n`{sig}` — *{kind}*: {note}.\n\n{_rst_to_markdown(doc)}\n")
    header = ("<!-- generated from jit_core/hookspecs.py by jit_core.plugins.hookref.hook_reference_markdown(); "
              "regenerate with: python -m jit_core.plugins.hookref --update-docs docs/plugins.md -->\n\n"
              "| hook | called | what it does |\n| --- | --- | --- |\n")
    return header + "\n".join(rows) + "\n\n" + "\n".join(sections).rstrip() + "\n"


def update_hook_reference(path: str | os.PathLike) -> bool:
    """Rewrite the part of ``path`` between the hook markers; True if it changed."""
    path = Path(path)
    text = path.read_text()
    if HOOKS_START not in text or HOOKS_END not in text:
        raise ValueError(f"{path} has no {HOOKS_START} ... {HOOKS_END} markers")
    head, rest = text.split(HOOKS_START, 1)
    _, tail = rest.split(HOOKS_END, 1)
    new = f"{head}{HOOKS_START}\n{hook_reference_markdown()}{HOOKS_END}{tail}"
    if new != text:
        durable.write_text(path, new)
    return new != text


def documented_hook_reference(path: str | os.PathLike) -> str:
    """The part of ``path`` between the hook markers (to compare with :func:`hook_reference_markdown`)."""
    text = Path(path).read_text()
    return text.split(HOOKS_START, 1)[1].split(HOOKS_END, 1)[0].strip("\n") + "\n"


# ----------------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jit_core.plugins.hookref [--update-docs FILE | --check-docs FILE]``: print, rewrite or
    check the generated hook reference."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m jit_core.plugins.hookref", description=main.__doc__)
    parser.add_argument("--update-docs", metavar="FILE", help="rewrite the hook reference between the markers")
    parser.add_argument("--check-docs", metavar="FILE", help="exit 1 if the hook reference is out of date")
    args = parser.parse_args(argv)
    if args.update_docs:
        print(f"{args.update_docs}: {'updated' if update_hook_reference(args.update_docs) else 'up to date'}")
    elif args.check_docs:
        ok = documented_hook_reference(args.check_docs) == hook_reference_markdown()
        print(f"{args.check_docs}: {'up to date' if ok else 'OUT OF DATE (run with --update-docs)'}")
        return 0 if ok else 1
    else:
        sys.stdout.write(hook_reference_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
