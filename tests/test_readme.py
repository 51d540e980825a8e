"""The README's example runs as written, and the README and the docs name only public API."""

import re
from pathlib import Path

import keras
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# `dst.name` or `dst.module.name`, not inside a path or a word (docs/api/dst.md, keras-dst).
DST_NAME = re.compile(r"(?<![\w/.-])dst\.([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?")


def test_readme_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    block = re.search(r"## Ten lines\n\n```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - our own README
    rows = scope["dst"].summary(scope["model"], print_fn=lambda *_: None)
    assert abs(rows[-1]["density"] - 0.1) < 0.001
    plain = keras.models.load_model(tmp_path / "plain.keras")
    assert not any("dst" in type(layer).__module__ for layer in plain.layers)


def test_the_ten_lines_are_the_readmes_only_python_block():
    """tests/test_docs.py runs the docs' blocks; this file runs the README's one."""
    assert README.read_text().count("```python") == 1


def _private_names(text: str) -> list[str]:
    import dst

    private = []
    for top, attr in DST_NAME.findall(text):
        if top not in dst.__all__:
            private.append(f"dst.{top}")
            continue
        module = getattr(dst, top)
        if attr and hasattr(module, "__all__") and attr not in module.__all__:
            private.append(f"dst.{top}.{attr}")
    return sorted(set(private))


def test_every_dst_name_in_the_readme_is_public():
    assert DST_NAME.search(README.read_text()), "no dst names found"
    assert _private_names(README.read_text()) == []


@pytest.mark.parametrize("page", sorted(p.relative_to(DOCS).as_posix()
                                        for p in DOCS.rglob("*.md")
                                        if not p.is_relative_to(DOCS / "api")))
def test_every_dst_name_in_the_docs_is_public(page):
    assert _private_names((DOCS / page).read_text()) == []
