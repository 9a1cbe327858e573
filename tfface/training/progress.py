"""Training progress where Keras' progress bar shows none (output that is not a terminal, or `train.verbose: 2`).

Keras prints one line per epoch there, so a long epoch is silent for minutes. `StepProgress` prints a line when an
epoch's first step ends (in the first epoch of a fit TensorFlow traces and compiles the step then) and then one every `every_seconds`:

    epoch 2/20: step 120/400, loss 12.3456, 41 s; about 134 s per epoch, 93 s left

The time per epoch is measured from the steps after the epoch's first, so tracing does not inflate it.
"""
import sys
import time
from typing import Callable

import keras


class StepProgress(keras.callbacks.Callback):
    """Prints the progress lines of the module docstring to `out` (default stdout), flushed at once."""

    def __init__(self, epochs: int, steps_per_epoch: int, every_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, out=None):
        super().__init__()
        self.epochs, self.steps_per_epoch, self.every_seconds = int(epochs), int(steps_per_epoch), float(every_seconds)
        self.clock = clock
        self.out = out
        self.epoch = 0
        self.started = self.last_line = 0.0
        self.first_step_end = None  # the clock when the epoch's first step ended
        self.tracing = True

    def on_train_begin(self, logs=None):
        self.tracing = True  # each fit (each stage) traces its step first

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1
        self.started = self.last_line = self.clock()
        self.first_step_end = None

    def on_train_batch_end(self, batch, logs=None):
        now, step = self.clock(), batch + 1
        if self.first_step_end is None:
            self.first_step_end = now
        elif now - self.last_line < self.every_seconds or step >= self.steps_per_epoch:
            return  # the epoch's last step: Keras' own epoch line follows
        self.last_line = now
        print(self.line(step, now, logs or {}), file=self.out or sys.stdout, flush=True)

    def line(self, step: int, now: float, logs: dict) -> str:
        text = f"epoch {self.epoch}/{self.epochs}: step {step}/{self.steps_per_epoch}"
        if "loss" in logs:
            text += f", loss {float(logs['loss']):.4f}"
        text += f", {now - self.started:.0f} s"
        if step == 1:
            tracing, self.tracing = self.tracing, False
            return text + (" (the first step of a fit traces and compiles the model)" if tracing else "")
        seconds_per_step = (now - self.first_step_end) / (step - 1)
        left = seconds_per_step * (self.steps_per_epoch - step)
        return text + f"; about {seconds_per_step * self.steps_per_epoch:.0f} s per epoch, {left:.0f} s left"
