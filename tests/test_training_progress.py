"""tfface.training.progress.StepProgress: its lines against a hand-run clock."""
import io

from tfface.training.progress import StepProgress


def test_progress_lines_come_after_the_first_step_and_then_every_period_with_hand_computed_estimates():
    times = iter([100.0,   # epoch 1 begins
                  125.0,   # step 1 ends: 25 s of tracing -> a line
                  127.0,   # step 2: 2 s after the last line -> quiet
                  156.0,   # step 3: 31 s after -> a line; (156 - 125) / 2 = 15.5 s a step
                  160.0,   # step 4 (last): Keras' epoch line follows -> quiet
                  200.0,   # epoch 2 begins
                  203.0])  # step 1 ends -> a line
    out = io.StringIO()
    progress = StepProgress(epochs=2, steps_per_epoch=4, every_seconds=30, clock=lambda: next(times), out=out)
    progress.on_train_begin()
    progress.on_epoch_begin(0)
    for batch, loss in enumerate([9.0, 8.0, 7.25, 7.0]):
        progress.on_train_batch_end(batch, {"loss": loss})
    progress.on_epoch_begin(1)
    progress.on_train_batch_end(0, {"loss": 6.5})
    assert out.getvalue().splitlines() == [
        "epoch 1/2: step 1/4, loss 9.0000, 25 s (the first step of a fit traces and compiles the model)",
        "epoch 1/2: step 3/4, loss 7.2500, 56 s; about 62 s per epoch, 16 s left",
        "epoch 2/2: step 1/4, loss 6.5000, 3 s",
    ]
