"""Packaging for tfface: the library plus the trainer, tools, experiments, benchmarks and serving entry points."""
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [
    line.strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="tfface",
    version="0.1.0",
    description="Deep face recognition in TensorFlow/Keras 3: margin heads, regularizers, APRN, LATSE, 3D-BERL",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["tfface*", "trainers*", "tools*", "experiments*", "benchmarks*", "serving*"]),
    package_data={"trainers": ["configs/*.yaml"], "experiments": ["*/configs/*.yaml", "*/*.yaml"]},
    install_requires=requirements,
    entry_points={
        "console_scripts": [
            "tfface-train=trainers.train:main",
            "tfface-make-tfrecords=tools.make_tfrecords:main",
            "tfface-bench-train=benchmarks.bench_train:main",
            "tfface-export=tools.export:main",
            "tfface-evaluate=tools.evaluate:main",
            "tfface-serve=serving.server:main",
            "tfface-embed=serving.client:main",
            "tfface-synth=tools.synth:main",
            "tfface-demo=tools.demo:main",
            "tfface-align=tools.align:main",
            "tfface-annotate=tools.annotate:main",
        ]
    },
)
