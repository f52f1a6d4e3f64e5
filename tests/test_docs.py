"""The documents the code and the README point to exist, and the Markdown links between them resolve.

Docstrings cite ``cph-api.md §5`` and the README links ``docs/architecture.md``; a reader who follows
such a pointer must find the file. Names are matched by basename against the repository's files, so
a docstring may write ``cph-api.md`` for ``docs/cph-api.md``. Web addresses are left out: a Huawei
page ending in ``.md`` is not a file of ours.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SKIPPED_DIRS = frozenset({"__pycache__", "cph-runs", "node_modules", "build", "dist"})
"""Folders that hold no documents of ours (hidden folders such as ``.git`` and ``.venv`` too)."""

_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S+")
_MD_NAME = re.compile(r"[\w./-]*?([\w-]+\.md)\b")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def repo_files(root: Path) -> Iterator[Path]:
    """Every file of the repository, skipping hidden, cache and output folders."""
    for path in root.iterdir():
        if path.name.startswith(".") or path.name in SKIPPED_DIRS:
            continue
        if path.is_dir():
            if not path.name.endswith(".egg-info"):
                yield from repo_files(path)
        elif path.is_file():
            yield path


def md_names(text: str) -> set[str]:
    """Basenames of the ``*.md`` files a text names, web addresses left out."""
    return {match.group(1) for match in _MD_NAME.finditer(_URL.sub(" ", text))}


def python_prose(source: str) -> str:
    """The docstrings (module, class, function and attribute ones) and comments of a Python file."""
    parts = [
        node.value.value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    ]
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    parts.extend(token.string for token in tokens if token.type == tokenize.COMMENT)
    return "\n".join(parts)


def relative_links(markdown: str) -> list[str]:
    """Targets of the Markdown links that point into the repository (not web, mail or anchors)."""
    prose = _FENCE.sub("", markdown)
    targets = (match.group(1) for match in _LINK.finditer(prose))
    return [t for t in targets if not t.startswith("#") and not _SCHEME.match(t)]


def broken_links(markdown_file: Path) -> list[str]:
    """The relative links of a Markdown file whose target does not exist."""
    broken = []
    for target in relative_links(markdown_file.read_text(encoding="utf-8")):
        path = target.split("#", 1)[0]
        if path and not (markdown_file.parent / path).exists():
            broken.append(target)
    return broken


def missing_md_names(named_in: Iterable[tuple[Path, str]], known: set[str]) -> list[str]:
    """``"<file>: <name>"`` for every ``*.md`` name a text gives that is not a known basename."""
    return sorted(
        f"{source.relative_to(REPO) if source.is_relative_to(REPO) else source}: {name}"
        for source, text in named_in
        for name in md_names(text)
        if name not in known
    )


def markdown_documents() -> list[Path]:
    """README.md and every document under docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def texts_that_name_documents() -> Iterator[tuple[Path, str]]:
    """The Markdown documents whole, and the prose of every Python file of the package and tests."""
    for document in markdown_documents():
        yield document, document.read_text(encoding="utf-8")
    for folder in (REPO / "orchestrator", REPO / "tests"):
        for source in sorted(folder.rglob("*.py")):
            yield source, python_prose(source.read_text(encoding="utf-8"))


def test_every_md_file_named_in_the_docs_and_the_code_exists() -> None:
    known = {path.name for path in repo_files(REPO)}
    assert missing_md_names(texts_that_name_documents(), known) == []


@pytest.mark.parametrize("document", markdown_documents(), ids=lambda p: p.name)
def test_every_relative_link_of_a_document_resolves(document: Path) -> None:
    assert broken_links(document) == []


def test_the_documents_the_readme_promises_are_there() -> None:
    readme_links = set(relative_links((REPO / "README.md").read_text(encoding="utf-8")))
    assert {"docs/architecture.md", "docs/cph-api.md"} <= readme_links


# -- the checks themselves catch what they must ---------------------------------------------------


def test_a_name_in_a_docstring_or_comment_is_found_and_a_missing_one_reported() -> None:
    source = (
        '"""See ``cph-api.md`` §5."""\n\nLIMIT = 1\n"""As NOTES.md says."""\n# and docs/GONE.md\n'
    )
    text = 'x = "strings.md is no prose"\n'
    fake = REPO / "orchestrator" / "fake.py"
    report = missing_md_names([(fake, python_prose(source + text))], known={"cph-api.md"})
    assert report == ["orchestrator/fake.py: GONE.md", "orchestrator/fake.py: NOTES.md"]


def test_web_addresses_and_bare_suffixes_are_not_file_names() -> None:
    text = "[DOC:https://support.huaweicloud.com/api-cph/cph_api_0522.md] a newer `.md` copy"
    assert md_names(text) == set()


def test_a_link_to_a_missing_file_is_reported_and_others_pass(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("# there\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "[ok](docs/there.md#part) [gone](docs/gone.md) [web](https://example.com/x.md)\n"
        "[anchor](#top)\n```sh\n[not a link](in/code.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(readme) == ["docs/gone.md"]
