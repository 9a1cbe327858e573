"""Grouped 2-D convolution computed the way TensorFlow runs fast on CPU and GPU.

`keras.layers.Conv2D(groups=g)` hands TF one grouped convolution; TF's CPU gradient of that op is pathological
(MobileFaceNet scale 2's stage-1 conv, 128 -> 128 channels in 64 groups at 56x56: forward + gradient ~24 s at batch
2, against 0.013 s for a depthwise conv of the same shape). `grouped_conv2d` computes the same function from the same
kernel [kh, kw, C_in / g, C_out] in one of two ways, both with fast gradients:

- few input channels per group (<= DEPTHWISE_MAX_GROUP_INPUTS): one depthwise conv with channel multiplier
  C_out / g on the kernel regrouped to [kh, kw, C_in, C_out / g], then a sum over each group's inputs. Its
  multiply-adds equal the grouped conv's; the depthwise output is C_in / g times the grouped output's size.
- otherwise: one dense conv per group on its slice of the channels, concatenated.

`GroupedConv2D` is `keras.layers.Conv2D` with that computation: the same variables (name, shape, layout). Keras
weights files (`.weights.h5`: checkpoints, backups) address each layer by its class name in snake case and its rank
among the layers of that class ("conv2d_3"), so the class is named `Conv2D` too (`GroupedConv2D` is its alias here):
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


@keras.saving.register_keras_serializable(package="tfface")
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` (channels last) whose grouped convolution runs through `grouped_conv2d`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.data_format != "channels_last":
            raise ValueError(f"GroupedConv2D supports data_format='channels_last' only, got {self.data_format!r}")

    def convolution_op(self, inputs, kernel):
        return grouped_conv2d(inputs, kernel, self.groups, strides=self.strides, padding=self.padding,
                              dilation_rate=self.dilation_rate)


GroupedConv2D = Conv2D
