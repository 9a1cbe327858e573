"""What an exported embedding model costs at inference: stored variables, parameters and FLOPs per image.

    python -m tools.inference_cost models/baseline/1 models/bypass3d/1 [--signature embed_normalized] [--out r.json]

For each SavedModel version folder (written by `tools.export` / `tfface.export`): the variables stored in its
checkpoint (count, total number of scalars, and any whose checkpoint key names a training-only part: branch, head,
optimizer, regularizer), and the floating-point operations of one image through `--signature`, counted by
TensorFlow's profiler on the signature with its variables frozen to constants (so the function calls are inlined).
Models that cost the same print the same numbers.
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List

import tensorflow as tf
from tensorflow.python.framework import convert_to_constants

from tfface import atomic, cli
from tfface.export import INPUT_KEY, NORMALIZED_SIGNATURE

CHECKPOINT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
TRAINING_ONLY_WORDS = ("bypass3d", "phi_", "branch", "head", "optimizer", "regularizer", "center")


def stored_variables(version_dir) -> Dict[str, List[int]]:
    """{checkpoint key: shape} of every variable in a SavedModel's variables/ checkpoint."""
    reader = tf.train.load_checkpoint(str(Path(version_dir) / "variables" / "variables"))
    shapes = reader.get_variable_to_shape_map()
    return {key: list(shape) for key, shape in shapes.items() if key != CHECKPOINT_GRAPH_KEY}


def flops_per_image(version_dir, signature: str = NORMALIZED_SIGNATURE) -> int:
    """Float operations of one image through `signature` (its input spec with the batch set to 1)."""
    loaded = tf.saved_model.load(str(version_dir))
    if signature not in loaded.signatures:
        raise ValueError(f"{version_dir}: no signature '{signature}'; has {', '.join(sorted(loaded.signatures))}")
    function = loaded.signatures[signature]
    spec = function.structured_input_signature[1][INPUT_KEY]
    one_image = tf.TensorSpec([1, *spec.shape[1:]], spec.dtype)
    concrete = tf.function(lambda images: function(**{INPUT_KEY: images}), autograph=False).get_concrete_function(
        one_image
    )
    frozen = convert_to_constants.convert_variables_to_constants_v2(concrete)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return int(tf.compat.v1.profiler.profile(graph=frozen.graph, options=options).total_float_ops)


def cost(version_dir, signature: str = NORMALIZED_SIGNATURE) -> Dict:
    """The cost report of one SavedModel version folder."""
    version_dir = Path(version_dir)
    if not (version_dir / "saved_model.pb").is_file():
        raise FileNotFoundError(f"not a SavedModel version folder (no saved_model.pb): {version_dir}")
    variables = stored_variables(version_dir)
    parameters = 0
    for shape in variables.values():
        count = 1
        for size in shape:
            count *= size
        parameters += count
    training_only = sorted(key for key in variables if any(word in key.lower() for word in TRAINING_ONLY_WORDS))
    return {
        "model": str(version_dir), "signature": signature, "variables": len(variables), "parameters": parameters,
        "flops_per_image": flops_per_image(version_dir, signature), "training_only_variables": training_only,
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m tools.inference_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="SavedModel version folders")
    parser.add_argument("--signature", default=NORMALIZED_SIGNATURE, help="signature whose FLOPs are counted")
    parser.add_argument("--out", help="JSON file to write")
    return parser.parse_args(argv)


@cli.command
def main(argv=None) -> int:
    args = parse_args(argv)
    reports = [cost(model, args.signature) for model in args.models]
    for report in reports:
        print(f"{report['model']}: {report['variables']} variables, {report['parameters']} parameters, "
              f"{report['flops_per_image']} FLOPs per image; training-only variables: "
              f"{report['training_only_variables'] or 'none'}")
    if args.out:
        atomic.write_json(args.out, reports)
    return 0


if __name__ == "__main__":
    sys.exit(main())
