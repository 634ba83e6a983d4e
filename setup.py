from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
VERSION = {}
exec((ROOT / "restr_fast" / "version.py").read_text(), VERSION)

setup(
    name="restr_fast",
    version=VERSION["__version__"],
    description="Fast, trainable ReSTR: convolution-free referring image segmentation with Triton kernels",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    # `kernels/` and `training/` live at the top level of the repository but are imported as
    # `restr_fast.kernels` and `restr_fast.training`: a top-level `kernels` package would
    # shadow the unrelated `kernels` package on PyPI.
    packages=[
        "restr_fast",
        "restr_fast.data",
        "restr_fast.models",
        "restr_fast.text",
        "restr_fast.kernels",
        "restr_fast.training",
    ],
    package_dir={
        "restr_fast": "restr_fast",
        "restr_fast.kernels": "kernels",
        "restr_fast.training": "training",
    },
    package_data={"restr_fast.training": ["configs/*.yaml"]},
    install_requires=[
        "torch>=2.10",
        "triton>=3.4; platform_system == 'Linux'",
        "xformers>=0.0.30; platform_system == 'Linux'",
        "timm>=1.0.20",
        "numpy>=1.24",
        "pycocotools>=2.0.7",
        "pillow>=11.0",  # opens 16-bit PNGs as I;16 (10 opened them as I, the 32-bit mode)
        "tqdm>=4.60",
        "pyyaml>=6.0",
        "safetensors>=0.4",
        "nvidia-ml-py>=12.0",
    ],
    extras_require={
        "test": ["pytest>=8.0", "pytest-benchmark>=4.0"],
    },
    entry_points={"console_scripts": ["restr-fast = restr_fast.cli:console_main"]},
)
