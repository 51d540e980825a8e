"""mkdocs hook: the plots in experiments/results/ are served as results/<name>.png.

The benchmark pages show the plots the runs wrote, without a copy under docs/.
"""

from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parents[2] / "experiments" / "results"


def on_files(files, config):
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"results/{png.name}", abs_src_path=str(png)))
    return files
