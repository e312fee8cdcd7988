"""Installs the toolkit as the package ``youtube-8m`` (the repository folder itself).

Every script then runs as ``python -m youtube-8m.<script>``, which is how a
cloud training job starts it: build the source distribution
(``python -m build --sdist``, which writes ``dist/yt8m_toolkit-0.1.0.tar.gz``), copy
it to Cloud Storage and pass it to
``gcloud ai custom-jobs create --python-package-uris=...`` with
``python-module=youtube-8m.train`` (see cloudml-gpu.yaml).  The prebuilt
TensorFlow containers already hold TensorFlow, numpy and absl-py.
"""
from setuptools import setup
from setuptools.command.build_py import build_py

TENSORFLOW_VERSIONS = ">=2.16,<2.22"  # graph mode via tf.compat.v1; tested on 2.21


class BuildPy(build_py):
    """Leaves this file out of the installed package: it builds the package, it is no module."""

    def find_package_modules(self, package, package_dir):
        return [entry for entry in super().find_package_modules(package, package_dir)
                if entry[1] != "setup"]


setup(
    name="yt8m-toolkit",
    version="0.1.0",
    description="YouTube-8M video classification: Gated NetVLAD/MoE training, checkpoint "
    "averaging, float16 ensembles and Kaggle submissions on TensorFlow 2.",
    python_requires=">=3.10",
    packages=["youtube-8m"],
    package_dir={"youtube-8m": "."},
    cmdclass={"build_py": BuildPy},
    install_requires=[f"tensorflow{TENSORFLOW_VERSIONS}", "numpy>=1.26", "absl-py>=2.1"],
    extras_require={
        "test": ["pytest>=8", "ruff>=0.6", "psutil>=5.9"],
        "gpu": [f"tensorflow[and-cuda]{TENSORFLOW_VERSIONS}"],
    },
)
