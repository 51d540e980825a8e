"""The README's example runs as written."""

import re
from pathlib import Path

import keras

README = Path(__file__).resolve().parents[1] / "README.md"


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


def test_every_dst_name_in_the_readme_is_public():
    import dst

    names = set(re.findall(r"\bdst\.([A-Za-z_]\w*)", README.read_text()))
    modules = {"py", "callbacks", "updaters", "layers", "distributions", "export", "backend",
               "masking",
               "blocks", "schedules"}
    top = {n for n in names if n not in modules and not n.startswith("_")}
    assert top, "no dst names found"
    assert sorted(n for n in top if n not in dst.__all__) == []
