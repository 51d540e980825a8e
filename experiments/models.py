"""The three architectures, buildable with Keras 3 or with tf_keras (for TF-MOT).

`build(spec, input_shape, num_classes, k)` takes the Keras module `k` (`keras`
or `tf_keras`) so that every method, TF-MOT included, trains the very same
architecture. Models output logits.
"""

from __future__ import annotations

from collections.abc import Mapping


def build(spec: Mapping, input_shape, num_classes: int, k=None):
    """Builds the functional model `spec["name"]` with Keras module `k`.

    Args:
        spec: the config's `model` mapping: {"name": "mlp"|"cnn"|"resnet", ...}.
        input_shape: shape of one example.
        num_classes: number of logits.
        k: `keras` (default) or `tf_keras`.
    """
    if k is None:
        import keras as k
    builders = {"mlp": _mlp, "cnn": _cnn, "resnet": _resnet}
    options = {key: v for key, v in spec.items() if key != "name"}
    inputs = k.Input(shape=tuple(input_shape))
    outputs = builders[spec["name"]](k.layers, inputs, num_classes, **options)
    return k.Model(inputs, outputs, name=spec["name"])


def _mlp(layers, x, num_classes, hidden=(300, 100)):
    """LeNet-300-100 (LeCun et al. 1998) for hidden=(300, 100)."""
    x = layers.Flatten(name="flatten")(x)
    for i, width in enumerate(hidden, start=1):
        x = layers.Dense(width, activation="relu", name=f"fc{i}")(x)
    return layers.Dense(num_classes, name="logits")(x)


def _cnn(layers, x, num_classes):
    """LeNet-5-like: conv(6, 5x5) - pool - conv(16, 5x5) - pool - 120 - 84.

    Convolutions use 'same' padding so 8x8 digits fit as well as 28x28 and 32x32.
    """
    x = layers.Conv2D(6, 5, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(16, 5, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(120, activation="relu", name="fc1")(x)
    x = layers.Dense(84, activation="relu", name="fc2")(x)
    return layers.Dense(num_classes, name="logits")(x)


def _resnet(layers, x, num_classes, blocks=1, width=16):
    """CIFAR ResNet (He et al. 2016) with 3 stages of `blocks` basic blocks.

    blocks=1 is ResNet-8, blocks=3 ResNet-20. Widths are width, 2x, 4x.
    """

    def conv_bn(x, filters, kernel, stride, name, relu=True):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same",
                          use_bias=False, kernel_initializer="he_normal", name=name)(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x) if relu else x

    x = conv_bn(x, width, 3, 1, "stem")
    for stage in range(3):
        filters = width * 2**stage
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            name = f"s{stage + 1}b{block + 1}"
            shortcut = x
            y = conv_bn(x, filters, 3, stride, f"{name}_conv1")
            y = conv_bn(y, filters, 3, 1, f"{name}_conv2", relu=False)
            if stride != 1 or x.shape[-1] != filters:
                shortcut = conv_bn(x, filters, 1, stride, f"{name}_proj", relu=False)
            x = layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return layers.Dense(num_classes, name="logits")(x)
