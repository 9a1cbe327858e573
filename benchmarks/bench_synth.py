"""Benchmark SynthFaces generation speed: median images/s over a few batches after a warm-up batch.

    python -m benchmarks.bench_synth [--image-size 64] [--batch-size 128] [--batches 5] [--seed 0]

Times `SynthFaceRenderer.render` (sampling, rendering, noise, uint8), not the TFRecord/PNG writing. Also reports
images per CPU-second of this process (all threads), which stays meaningful on a machine shared with other jobs.
"""
import argparse
import statistics
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_synth", description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=5, help="timed batches after the warm-up")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.batches < 1 or args.image_size < 16:
        print("error: --batch-size and --batches must be >= 1 and --image-size >= 16", file=sys.stderr)
        return 2

    import numpy as np

    from tfface.data.synth import SynthFaceRenderer, SynthOptions

    renderer = SynthFaceRenderer(SynthOptions(image_size=args.image_size), args.batch_size)
    started = time.perf_counter()
    renderer.render(args.seed, np.arange(args.batch_size), np.zeros(args.batch_size, np.int64))
    print(f"warm-up (tracing and XLA compilation): {time.perf_counter() - started:.1f} s")
    rates, cpu_rates = [], []
    for batch in range(1, args.batches + 1):
        identities = np.arange(args.batch_size) + batch * args.batch_size
        started, cpu_started = time.perf_counter(), time.process_time()
        renderer.render(args.seed, identities, np.full(args.batch_size, batch, np.int64))
        rates.append(args.batch_size / (time.perf_counter() - started))
        cpu_rates.append(args.batch_size / max(time.process_time() - cpu_started, 1e-9))
    print(f"SynthFaces {args.image_size}x{args.image_size}, batch {args.batch_size}: "
          f"median {statistics.median(rates):.0f} images/s over {args.batches} batches "
          f"(min {min(rates):.0f}, max {max(rates):.0f}); "
          f"{statistics.median(cpu_rates):.0f} images per CPU-second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
