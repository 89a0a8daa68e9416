"""The documentation is executable and complete.

- Every ```python block in docs/*.md and README.md is a complete program that runs
  (a block whose first line is ``# fragment`` is only compiled).
- Every public name of ``jido_trio`` is in the API reference and has a docstring.
- Every hook in ``jido_trio/hookspecs.py`` is in the hooks reference and documents
  each of its parameters with ``:param``.
- Every ``Config`` field is described in docs/configuration.md.

Failures list every missing item at once, not just the first.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pytest

import jido_trio

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PACKAGE = ROOT / "jido_trio"
REFERENCE = DOCS / "reference.md"
MARKDOWN = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
FRAGMENT_MARK = "# fragment"
TIMEOUT = 60

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)")


# ---------------------------------------------------------------- code blocks


@attrs.frozen
class CodeBlock:
    path: Path
    line: int  # 1-based line of the opening fence
    code: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def is_fragment(self) -> bool:
        first = self.code.lstrip().splitlines()[0] if self.code.strip() else ""
        return first.strip().lower().startswith(FRAGMENT_MARK)


def python_blocks(path: Path) -> list[CodeBlock]:
    """Fenced ```python blocks of a Markdown file, dedented (they may sit in an
    admonition or a list)."""
    blocks: list[CodeBlock] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, indent = opening["fence"], opening["indent"]
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            closing = _FENCE.match(lines[j])
            if (
                closing is not None
                and closing["fence"].startswith(fence[0])
                and len(closing["fence"]) >= len(fence)
                and not closing["lang"]
                and lines[j].strip() == closing["fence"]
            ):
                break
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        if opening["lang"] in ("python", "py", "python3"):
            blocks.append(CodeBlock(path, i + 1, textwrap.dedent("\n".join(body)) + "\n"))
        i = j + 1
    return blocks


BLOCKS = [block for path in MARKDOWN for block in python_blocks(path)]


def test_docs_have_code_blocks() -> None:
    assert len(BLOCKS) >= 10, [b.name for b in BLOCKS]
    fragments = [b.name for b in BLOCKS if b.is_fragment]
    # Fragments are not run: keep them rare.
    assert len(fragments) <= max(3, len(BLOCKS) // 5), fragments


@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_code_block(block: CodeBlock, tmp_path: Path) -> None:
    if block.is_fragment:
        compile(block.code, block.name, "exec")
        return
    script = tmp_path / "block.py"
    script.write_text(block.code, encoding="utf-8")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    # Doc examples must not depend on whatever third-party plugins are installed.
    env["JIDO_TRIO_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"code block at {block.name} failed ({result.returncode})\n"
        f"--- code\n{block.code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


# ---------------------------------------------------------------- public names


def exported_names() -> list[str]:
    """Names re-exported by jido_trio/__init__.py (``from ._x import Y as Y``) and
    public top-level assignments."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            names.extend(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Assign):
            names.extend(t.id for t in node.targets if isinstance(t, ast.Name))
    return [n for n in names if not n.startswith("_")]


def _doc_comment(module: object, name: str) -> str | None:
    """The documentation of a module-level data name: a string literal right after
    its assignment, or ``#:`` comment lines right before it (Sphinx's convention)."""
    source = inspect.getsource(module)  # type: ignore[arg-type]
    tree = ast.parse(source)
    lines = source.splitlines()
    for index, node in enumerate(tree.body):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if not any(isinstance(t, ast.Name) and t.id == name for t in targets):
            continue
        following = tree.body[index + 1] if index + 1 < len(tree.body) else None
        if (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            return following.value.value
        comments: list[str] = []
        row = node.lineno - 2
        while row >= 0 and lines[row].lstrip().startswith("#:"):
            comments.insert(0, lines[row].lstrip()[2:].strip())
            row -= 1
        return "\n".join(comments) or None
    return None


def docstring_of(name: str) -> str | None:
    obj = getattr(jido_trio, name)
    if inspect.isclass(obj):
        return vars(obj).get("__doc__")  # its own, not inherited
    if inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isbuiltin(obj):
        return obj.__doc__
    if callable(obj) and hasattr(obj, "__wrapped__"):
        return obj.__doc__  # e.g. an asynccontextmanager function
    # Data (an instance such as the hookimpl marker): documented where it is defined.
    for module in (sys.modules[m] for m in list(sys.modules) if m.startswith("jido_trio")):
        if vars(module).get(name) is obj and module is not jido_trio:
            found = _doc_comment(module, name)
            if found:
                return found
    return None


def reference_text() -> str:
    return REFERENCE.read_text(encoding="utf-8")


def test_public_names_are_exported() -> None:
    names = exported_names()
    assert len(names) >= 30, names
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"exported more than once: {duplicates}"
    missing = [n for n in names if not hasattr(jido_trio, n)]
    assert not missing, f"listed in __init__.py but not importable: {missing}"


def test_public_names_documented() -> None:
    reference = reference_text()
    directives = set(re.findall(r"^:::[ \t]+([\w.]+)", reference, re.MULTILINE))
    problems: list[str] = []
    for name in exported_names():
        rendered = f"jido_trio.{name}" in directives
        mentioned = re.search(rf"(?<![\w.])(jido_trio\.)?{re.escape(name)}(?!\w)", reference)
        if not (rendered or mentioned):
            problems.append(f"jido_trio.{name}: not in docs/reference.md")
        if not (docstring_of(name) or "").strip():
            problems.append(f"jido_trio.{name}: has no docstring")
    assert not problems, "undocumented public API:\n  " + "\n  ".join(problems)


def test_reference_directives_resolve() -> None:
    """Every ``::: jido_trio.X`` names something that exists (a typo would only
    show up in the docs build)."""
    problems: list[str] = []
    for target in re.findall(r"^:::[ \t]+([\w.]+)", reference_text(), re.MULTILINE):
        module_name, _, attr = target.partition(".")
        obj: object = __import__(module_name)
        for part in attr.split(".") if attr else []:
            if hasattr(obj, part):
                obj = getattr(obj, part)
                continue
            try:
                obj = __import__(f"{obj.__name__}.{part}", fromlist=["_"])  # type: ignore[attr-defined]
            except ImportError:
                problems.append(target)
                break
    assert not problems, f"::: directives that name nothing: {problems}"


# ---------------------------------------------------------------- hooks


def hookspecs() -> dict[str, ast.FunctionDef]:
    tree = ast.parse((PACKAGE / "hookspecs.py").read_text(encoding="utf-8"))
    return {
        node.name: node
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("jido_trio_")
    }


def hooks_section() -> str:
    text = reference_text()
    start = text.find("\n## Hooks")
    assert start != -1, "docs/reference.md has no '## Hooks' section"
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_hooks_documented() -> None:
    specs = hookspecs()
    assert len(specs) >= 8, sorted(specs)
    section = hooks_section()
    # The hand-written table, not just the rendered directive.
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    problems: list[str] = []
    for name, node in specs.items():
        if f"`{name}`" not in table:
            problems.append(f"{name}: not in the hooks table of docs/reference.md")
        doc = ast.get_docstring(node)
        if not doc:
            problems.append(f"{name}: has no docstring")
            continue
        params = [a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)]
        if not params:
            continue
        if ":param" not in doc:
            problems.append(f"{name}: docstring has no :param entries")
        for param in params:
            if not re.search(rf":param(\s+[\w\[\], .|]+)?\s+{param}:", doc):
                problems.append(f"{name}: parameter {param!r} has no ':param {param}:'")
            row = next((r for r in table.splitlines() if f"`{name}`" in r), "")
            if row and f"`{param}`" not in row:
                problems.append(f"{name}: parameter {param!r} missing from its table row")
    stale = sorted(set(re.findall(r"`(jido_trio_\w+)`", table)) - set(specs))
    if stale:
        problems.append(f"hooks table lists hooks that do not exist: {stale}")
    assert not problems, "hooks reference incomplete:\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------- configuration


def test_every_config_field_documented() -> None:
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    missing = [
        f.name for f in attrs.fields(jido_trio.Config) if not re.search(rf"`{f.name}`", page)
    ]
    assert not missing, f"Config fields not described in docs/configuration.md: {missing}"


def test_nav_lists_every_page() -> None:
    mkdocs = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {p.name for p in DOCS.glob("*.md")}
    listed = set(re.findall(r":\s*([\w./-]+\.md)\s*$", mkdocs, re.MULTILINE))
    assert pages == listed, {"not in nav": pages - listed, "missing files": listed - pages}


def test_config_defaults_in_docs_are_current() -> None:
    """The defaults in the configuration tables are the real ones."""
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    defaults = jido_trio.Config()
    fields = {f.name: f for f in attrs.fields(jido_trio.Config)}
    wrong: list[str] = []
    for name, text in re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", page, re.MULTILINE):
        field = fields.get(name)
        if field is None or isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            continue
        if ast.literal_eval(text) != getattr(defaults, name):
            wrong.append(f"{name}: docs say {text}, default is {getattr(defaults, name)!r}")
    assert not wrong, "configuration.md shows stale defaults:\n  " + "\n  ".join(wrong)


def test_dedupe_window_numbers_are_current() -> None:
    from jido_trio._core import CHUNK_SIZE

    page = (DOCS / "concepts.md").read_text(encoding="utf-8")
    window = jido_trio.Config().dedupe_window
    assert f"chunks of {CHUNK_SIZE} ids" in page, f"concepts.md: chunk size is {CHUNK_SIZE}"
    assert f"({window:,} by default)" in page, f"concepts.md: dedupe window is {window:,}"


def test_the_error_tree_in_the_docs_is_the_one_in_the_code() -> None:
    """concepts.md shows the hierarchy documented in jido_trio._exceptions,
    and that lists every public error."""
    from jido_trio import _exceptions

    code_doc = _exceptions.__doc__ or ""
    tree = code_doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    lines = [line[4:] for line in tree.splitlines()]
    page = (DOCS / "concepts.md").read_text(encoding="utf-8")
    assert "```text\n" + "\n".join(lines) + "\n```" in page
    listed = {line.split("── ")[1].split()[0] for line in lines if "── " in line}
    public = {
        name
        for name in dir(jido_trio)
        if isinstance(getattr(jido_trio, name), type)
        and issubclass(getattr(jido_trio, name), jido_trio.JidoError)
        and name != "JidoError"
    }
    assert public <= listed, f"errors missing from the tree: {sorted(public - listed)}"
