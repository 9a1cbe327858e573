"""2-D convolutions computed the way TensorFlow runs fast on CPU and GPU: grouped ones, and pointwise ones in training.

`keras.layers.Conv2D(groups=g)` hands TF one grouped convolution; TF's CPU gradient of that op is pathological
(MobileFaceNet scale 2's stage-1 conv, 128 -> 128 channels in 64 groups at 56x56: forward + gradient ~24 s at batch
2, against 0.013 s for a depthwise conv of the same shape). `grouped_conv2d` computes the same function from the same
kernel [kh, kw, C_in / g, C_out] in one of two ways, both with fast gradients:

- few input channels per group (<= DEPTHWISE_MAX_GROUP_INPUTS): one depthwise conv with channel multiplier
  C_out / g on the kernel regrouped to [kh, kw, C_in, C_out / g], then a sum over each group's inputs. Its
  multiply-adds equal the grouped conv's; the depthwise output is C_in / g times the grouped output's size.
- otherwise: one dense conv per group on its slice of the channels, concatenated.

A pointwise convolution (1x1 kernel, stride 1, no groups) is, in training, one matrix product of the [N H W, C_in]
pixels with the [C_in, C_out] kernel: oneDNN's matmul and its two gradient matmuls took 1.2-1.5x less time than its
1x1 convolution and gradients on MobileFaceNet's large maps ([32, 56, 56, 64] -> 128: 20 ms instead of 30, forward +
gradient, 2 CPU cores). Inference keeps the convolution, so exported files hold the usual Conv op.

`Conv2D` is `keras.layers.Conv2D` with these computations: the same variables (name, shape, layout). Keras
weights files (`.weights.h5`: checkpoints, backups) address each layer by its class name in snake case and its rank
among the layers of that class ("conv2d_3"), so the class is named `Conv2D` too (`GroupedConv2D` is its alias):
files written by a model built with `keras.layers.Conv2D(groups=...)` load unchanged, and the other way round.
"""
import keras
from keras import ops

DEPTHWISE_MAX_GROUP_INPUTS = 8


def grouped_conv2d(inputs, kernel, groups: int, strides=(1, 1), padding: str = "valid", dilation_rate=(1, 1)):
    """inputs [N, H, W, C_in] (channels last), kernel [kh, kw, C_in / groups, C_out] -> [N, H', W', C_out].

    Output channel o reads input group o // (C_out / groups); the result equals `Conv2D(groups=groups)`'s.
    """
    kernel_h, kernel_w, group_inputs, out_channels = kernel.shape
    in_channels = inputs.shape[-1]
    if in_channels != group_inputs * groups or out_channels % groups:
        raise ValueError(f"grouped conv: {in_channels} input and {out_channels} output channels do not split into "
                         f"{groups} groups of {group_inputs} inputs (kernel {tuple(kernel.shape)})")
    options = {"strides": strides, "padding": padding, "dilation_rate": dilation_rate}
    if groups == 1:
        return ops.conv(inputs, kernel, **options)
    group_outputs = out_channels // groups
    if group_inputs <= DEPTHWISE_MAX_GROUP_INPUTS:
        # kernel[:, :, i, g * group_outputs + j] -> depthwise[:, :, g * group_inputs + i, j]
        depthwise = ops.reshape(kernel, (kernel_h, kernel_w, group_inputs, groups, group_outputs))
        depthwise = ops.reshape(ops.transpose(depthwise, (0, 1, 3, 2, 4)),
                                (kernel_h, kernel_w, in_channels, group_outputs))
        y = ops.depthwise_conv(inputs, depthwise, **options)  # channel c * group_outputs + j
        batch, height, width = ops.shape(y)[:3]
        y = ops.reshape(y, (batch, height, width, groups, group_inputs, group_outputs))
        return ops.reshape(ops.sum(y, axis=4), (batch, height, width, out_channels))
    parts = ops.split(inputs, groups, axis=-1)
    kernels = ops.split(kernel, groups, axis=-1)
    return ops.concatenate([ops.conv(x, k, **options) for x, k in zip(parts, kernels)], axis=-1)


def pointwise_conv2d(inputs, kernel):
    """inputs [N, H, W, C_in], kernel [1, 1, C_in, C_out] -> [N, H, W, C_out] as one matmul over the pixels."""
    in_channels, out_channels = kernel.shape[2], kernel.shape[3]
    batch, height, width = ops.shape(inputs)[0], ops.shape(inputs)[1], ops.shape(inputs)[2]
    pixels = ops.reshape(inputs, (-1, in_channels))
    y = ops.matmul(pixels, ops.reshape(kernel, (in_channels, out_channels)))
    return ops.reshape(y, (batch, height, width, out_channels))


@keras.saving.register_keras_serializable(package="tfface")
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` (channels last): grouped convolutions run through `grouped_conv2d`, pointwise ones in
    training through `pointwise_conv2d`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.data_format != "channels_last":
            raise ValueError(f"tfface's Conv2D supports data_format='channels_last' only, got {self.data_format!r}")

    def convolution_op(self, inputs, kernel):
        return grouped_conv2d(inputs, kernel, self.groups, strides=self.strides, padding=self.padding,
                              dilation_rate=self.dilation_rate)

    def _pointwise(self) -> bool:
        return (self.groups == 1 and tuple(self.kernel_size) == (1, 1) and tuple(self.strides) == (1, 1)
                and tuple(self.dilation_rate) == (1, 1))

    def call(self, inputs, training=None):
        if not (training and self._pointwise()):
            return super().call(inputs)
        outputs = pointwise_conv2d(inputs, self.kernel)
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        return outputs if self.activation is None else self.activation(outputs)


GroupedConv2D = Conv2D
