"""Export a training run's embedding path as an inference-only SavedModel in TF Serving's layout.

    python -m tools.export --work_dir runs/arcface --out models/arcface/1

The last folder of --out is the version number that TF Serving (and serving.server) load; it must not exist yet.
See tfface/export.py for the signatures and the metadata file.
"""
import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfface.errors import ConfigError, check_output_folder  # noqa: E402
from tfface.export import export_run, load_exported  # noqa: E402


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.export", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work_dir", required=True, help="training work dir (run.json, config.yaml, backbone.weights.h5)"
    )
    parser.add_argument("--out", required=True, help="models/NAME/VERSION, VERSION a non-negative integer")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    try:
        if not out.name.isdigit():
            raise ConfigError(f"--out must end in a numeric version folder (models/NAME/VERSION), got '{args.out}'")
        check_output_folder(out.parent, "--out", args.out)
        export_run(args.work_dir, out)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: --out {out}: cannot write: {error}", file=sys.stderr)
        return 2
    model = load_exported(out)
    print(
        f"exported {model.metadata['backbone']} ({model.input_shape[0]}x{model.input_shape[1]} -> "
        f"{model.embedding_size}-d embedding, config {model.metadata['config_hash']}) to {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
