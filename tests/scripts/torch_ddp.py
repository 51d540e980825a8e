"""RigL in a PyTorch DistributedDataParallel custom loop (gloo, CPU).

Usage: python torch_ddp.py RANK WORLD PORT OUT.npz

Each of WORLD processes trains on its slice of every global batch of 16;
DDP averages the gradients, `optimizer.apply` steps the weights, and dst's
sparse step runs inside it (`updater.attach()`). WORLD=1 is the
single-process reference on the full batches.
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "torch"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import dst  # noqa: E402


def main(rank: int, world: int, port: int, out: str) -> None:
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                rank=rank, world_size=world)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 12)).astype("float32")
    y = (x[:, :3] @ rng.normal(size=(3, 3))).astype("float32")
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3)])
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    dst.sparsify(model, 0.7, "uniform", seed=0)
    start = dst.get_masks(model)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = keras.optimizers.SGD(0.05)
    updater = dst.updaters.RigL(update_freq=2, drop_fraction=0.4, end_step=8, seed=3)
    updater.bind(model, optimizer=opt)
    per = 16 // world
    with updater.attach():
        for step in range(10):
            lo = step * 16 + rank * per
            xb, yb = torch.as_tensor(x[lo:lo + per]), torch.as_tensor(y[lo:lo + per])
            for v in model.trainable_variables:
                v.value.grad = None
            loss = torch.mean((net(xb) - yb) ** 2)
            loss.backward()  # DDP all-reduces (averages) the gradients here
            opt.apply([v.value.grad for v in model.trainable_variables],
                      model.trainable_variables)
    masks = dst.get_masks(model)
    np.savez(out, changed=any(not np.array_equal(start[k], masks[k]) for k in masks),
             **{f"mask:{k}": m for k, m in masks.items()},
             **{f"weight{i}": w for i, w in enumerate(model.get_weights())})
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
