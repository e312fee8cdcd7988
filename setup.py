"""Installs the toolkit as the package ``youtube-8m`` (the repository folder itself).

This is also what ``gcloud ... --package-path=youtube-8m --module-name=youtube-8m.train``
packages for a cloud training job.
"""
from setuptools import setup

TENSORFLOW = "tensorflow>=2.16,<2.22"  # graph mode via tf.compat.v1; tested on 2.21

setup(
    name="yt8m-toolkit",
    version="0.1.0",
    description="YouTube-8M video classification: Gated NetVLAD/MoE training, checkpoint "
    "averaging, float16 ensembles and Kaggle submissions on TensorFlow 2.",
    python_requires=">=3.10",
    packages=["youtube-8m"],
    package_dir={"youtube-8m": "."},
    install_requires=[TENSORFLOW, "numpy>=1.26", "absl-py>=2.1"],
    extras_require={
        "test": ["pytest>=8", "ruff>=0.6", "psutil>=5.9"],
        "gpu": ["tensorflow[and-cuda]>=2.16,<2.22"],
    },
)
