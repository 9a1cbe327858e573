"""3D-BERL's identity-irrelevant auxiliary (IIA) networks: Phi_w (image -> viewpoint) and Phi_l (image -> light).

Each is Unsup3D's parameter encoder: Conv-ReLU blocks halving the image down to 4x4 (channels width, 2 width,
4 width, then 8 width), a 4x4 valid Conv-ReLU to 1x1, and a 1x1 Conv-Tanh head; at the paper's 64x64 that is
5 x (Conv-ReLU) + Conv-Tanh. Outputs lie in (-1, 1); `tfface.branches.bypass3d` maps them to angles, translations
and light parameters.
"""
import math

import keras


def parameter_encoder(num_outputs: int, image_size: int = 64, width: int = 32, head_initializer="zeros",
                      name: str = "parameter_encoder"):
    """A keras.Sequential: float32 [N, image_size, image_size, 3] -> [N, num_outputs] in (-1, 1).

    image_size: a power of two >= 8 (the image is halved down to 4x4); width: channels of the first conv;
    head_initializer: of the Conv-Tanh head's kernel ("zeros": every output starts at 0, e.g. the canonical view).
    """
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
    if image_size < 8 or 2 ** int(round(math.log2(image_size))) != image_size:
        raise ValueError(f"image_size must be a power of two >= 8, got {image_size}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    layers = [keras.Input((image_size, image_size, 3))]
    halvings = int(round(math.log2(image_size))) - 2
    for index in range(halvings):
        channels = width * 2 ** min(index, 3)
        layers.append(keras.layers.Conv2D(channels, 4, strides=2, padding="same", use_bias=False,
                                          activation="relu", name=f"{name}_conv{index + 1}"))
    layers += [
        keras.layers.Conv2D(width * 8, 4, padding="valid", use_bias=False, activation="relu",
                            name=f"{name}_conv{halvings + 1}"),
        keras.layers.Conv2D(num_outputs, 1, activation="tanh", kernel_initializer=head_initializer,
                            name=f"{name}_head"),
        keras.layers.Flatten(name=f"{name}_flatten"),
    ]
    return keras.Sequential(layers, name=name)
