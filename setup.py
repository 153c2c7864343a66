"""shrinkteanet: ShrinkTeaNet, MarginDistillation and low-resolution teacher-student
face recognition on MXNet/Gluon, InsightFace-compatible.

The design card's top-level folders map into the one `shrinkteanet` namespace:
src/ -> shrinkteanet, symbols/ -> shrinkteanet.symbols, eval/ -> shrinkteanet.eval.
"""
from pathlib import Path

from setuptools import setup

#: top-level folder -> package; every folder below them with an ``__init__.py`` is a sub-package
ROOTS = {"shrinkteanet": "src", "shrinkteanet.symbols": "symbols", "shrinkteanet.eval": "eval"}


HERE = Path(__file__).resolve().parent


def _packages():
    found = {}
    for package, folder in ROOTS.items():
        for init in sorted((HERE / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(HERE / folder).parts
            found[".".join((package, *rel))] = Path(folder, *rel).as_posix()
    return found


PACKAGES = _packages()

setup(
    name="shrinkteanet",
    version="0.1.0",
    description="ShrinkTeaNet teacher-student face recognition on MXNet/Gluon",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",  # PEP 604 unions (`str | None`) are evaluated at import
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    include_package_data=False,
    install_requires=[
        "numpy",
        "gluoncv",
        "opencv-python",
        "easydict",
        "scikit-learn",
        "scipy",
        "matplotlib",
        "tqdm",
        "simplejpeg",
        "tensorboardX",
        "joblib",
        "lz4",
        "mtcnn==1.0.0",
    ],
    extras_require={
        "cpu": ["mxnet==1.9.1"],
        "cu112": ["mxnet-cu112==1.9.1"],
        "onnx": ["onnx==1.15.0", "onnxruntime", "protobuf"],
        "docs": ["sphinx", "myst-parser"],
        # the suite builds the docs (tests/test_docs.py), so the test extra carries the docs tools
        "test": ["pytest", "wheel", "onnx==1.15.0", "onnxruntime", "protobuf", "psutil", "hypothesis>=6.100,<7",
                 "sphinx", "myst-parser"],
    },
    entry_points={"console_scripts": ["shrinkteanet=shrinkteanet.cli:main"]},
)
