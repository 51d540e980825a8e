"""dst.testing: the conformance kit, run on every registered updater, on
algorithms written in this file, and on broken ones it must catch."""

import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import dst
from dst.testing import INVARIANTS, check_updater
from dst.updaters import registry

ROOT = Path(__file__).resolve().parents[1]

# Every updater dst registers: one added to the package is picked up here.
BUILTINS = sorted(name for name, cls in registry._REGISTRY.items()
                  if cls.__module__.startswith("dst.updaters."))
# Values for constructor arguments that have no default (pruning's target).
REQUIRED = {"final_sparsity": 0.8}
# Two-device data parallelism in one process: TensorFlow and JAX.
DATA_PARALLEL = keras.backend.backend() in ("tensorflow", "jax")
# Invariants a built-in is known to break, asserted so that a fix shows here.
KNOWN_GAPS: dict[str, str] = {}


def required_arguments(cls) -> dict:
    missing = [p.name for p in inspect.signature(cls).parameters.values()
               if p.default is inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD]
    unknown = [name for name in missing if name not in REQUIRED]
    assert not unknown, f"give {cls.__name__}'s required {unknown} a value in REQUIRED"
    return {name: REQUIRED[name] for name in missing}


@pytest.mark.slow  # two dozen short fits per updater
@pytest.mark.parametrize("name", BUILTINS)
def test_every_registered_updater_conforms(name):
    cls = dst.updaters.get(name)
    if name in KNOWN_GAPS:
        with pytest.raises(AssertionError, match=re.escape(KNOWN_GAPS[name])):
            check_updater(cls, **required_arguments(cls))
    else:
        check_updater(cls, data_parallel=DATA_PARALLEL, **required_arguments(cls))


# -- algorithms written by a user -----------------------------------------------------
class RandomDrop(dst.updaters.SET):
    """SET that also drops at random: a new drop rule is one method."""

    def drop_scores(self, kit, weight, mask, grad):
        return None


class GradientSwap(dst.updaters.Updater):
    """A rule written from scratch, on entries only: drop the quarter of
    smallest |w|, grow as many where |grad| is largest. The base runs it on
    the grid of blocks for block masks (the kit checks that)."""

    needs_gradients = True

    def step_value(self, step, index):
        return self.active[index] // 4

    def new_mask(self, kit, weight, mask, grad, value, salt):
        xp = kit.xp
        k = kit.cast(value, "int32")
        kept = xp.logical_and(mask, xp.logical_not(kit.select(xp.abs(weight), mask, k, salt(0))))
        grown = kit.select(xp.abs(grad), xp.logical_not(kept), k, salt(1), largest=True)
        return xp.logical_or(kept, grown)


@pytest.mark.slow  # two dozen short fits per updater
@pytest.mark.parametrize("cls", [RandomDrop, GradientSwap])
def test_a_user_algorithm_passes_the_kit(cls):
    check_updater(cls, update_freq=3)


# -- broken algorithms the kit must catch --------------------------------------------
class Greedy(dst.updaters.SET):
    """Keeps one connection more than it promises."""

    def new_mask(self, kit, weight, mask, grad, value, salt):
        new = super().new_mask(kit, weight, mask, grad, value, salt)
        extra = kit.select(None, kit.xp.logical_not(new), 1, salt(5))
        return kit.xp.logical_or(new, extra)


class HostRandom(dst.updaters.SET):
    """Drops by unseeded host noise, so the two paths disagree."""

    def drop_scores(self, kit, weight, mask, grad):
        noise = np.random.default_rng().random(tuple(weight.shape)).astype("float32")
        return kit.xp.abs(weight) + noise


@pytest.mark.parametrize("cls", [Greedy, HostRandom])
def test_the_kit_names_the_invariant_a_broken_algorithm_breaks(cls):
    with pytest.raises(AssertionError, match=re.escape(
            f"dst.testing.check_updater({cls.__name__}): {INVARIANTS[0]}")):
        check_updater(cls, drop_fraction=0.5)


def test_the_kit_refuses_what_is_not_an_updater_or_its_arguments():
    with pytest.raises(TypeError, match=r"takes an Updater subclass or a registered name\. "
                                        r"Received: 42"):
        check_updater(42)
    with pytest.raises(TypeError, match=r"SET takes no arguments \['power'\]"):
        check_updater("set", power=3)
    with pytest.raises(ValueError, match=r"Unknown dst updater: 'nope'"):
        check_updater("nope")
    if not DATA_PARALLEL:
        with pytest.raises(ValueError, match=r"data_parallel=True\) runs on TensorFlow or JAX"):
            check_updater("set", data_parallel=True)


# -- one new file in the package ---------------------------------------------------------
TOY = '''"""Toy: SET that drops the connections of smallest |w * grad|."""

from dst.updaters.registry import register
from dst.updaters.set import SET


@register("toy")
class Toy(SET):
    """SET whose drop score is |w * grad| (a toy for the package's tests)."""

    needs_gradients = True

    def drop_scores(self, kit, weight, mask, grad):
        return kit.xp.abs(weight * grad)
'''

CHECK = """
import os, pathlib, sys, dst
assert pathlib.Path(dst.__file__).parent == pathlib.Path.cwd() / "dst", dst.__file__
across = ("tensorflow", "jax", "torch") if sys.argv[1] == "across" else None
dst.testing.check_updater("toy", backends=across,
                          data_parallel=os.environ["KERAS_BACKEND"] != "torch")
print(os.environ["KERAS_BACKEND"], dst.callbacks.Toy.__name__,
      type(dst.callbacks.get("toy")).__name__)
"""

CONFIG = """dataset: teacher
model: {name: mlp, hidden: [16]}
methods: [dense, toy]
sparsities: [0.8]
seeds: [0]
epochs: 2
batch_size: 32
optimizer: adam
update_freq: 5
max_train_samples: 256
max_test_samples: 64
verbose: 0
"""


@pytest.mark.slow  # a copy of the package, processes on three backends
@pytest.mark.tensorflow_only  # runs every backend itself
def test_an_algorithm_added_to_the_package_is_one_new_file(tmp_path):
    for package in ("dst", "experiments"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__", "results"))
    (tmp_path / "dst" / "updaters" / "toy.py").write_text(TOY)
    (tmp_path / "toy.yaml").write_text(CONFIG)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", WANDB_MODE="disabled",
               PYTHONPATH=str(tmp_path))

    def run(*args, backend="tensorflow"):
        proc = subprocess.run([sys.executable, *args], cwd=tmp_path,
                              env=dict(env, KERAS_BACKEND=backend),
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return proc.stdout

    # Every invariant on TensorFlow and PyTorch, and the same masks on all three
    # (the cross-backend run imports the new file in a JAX process too).
    assert run("-c", CHECK, "here", backend="torch").split()[-3:] == ["torch", "Toy", "Toy"]
    assert run("-c", CHECK, "across").split()[-3:] == ["tensorflow", "Toy", "Toy"]
    run("-m", "experiments.run", "toy.yaml", "--out", "out")
    rows = (tmp_path / "out" / "runs.csv").read_text().splitlines()
    toy = [row for row in rows[1:] if row.split(",")[rows[0].split(",").index("method")] == "toy"]
    assert len(toy) == 1, rows
