"""Experiments for keras-dst: compare dense, static, magnitude, SET, RigL and TF-MOT.

Research code outside the `dst` package; it uses `dst` only through its public
API. Entry points:

    python -m experiments.run experiments/configs/digits.yaml --out runs/digits
    python -m experiments.sweep experiments/sweeps/grid.yaml --out runs/grid
"""
