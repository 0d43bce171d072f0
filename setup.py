"""Package metadata for hpcdiff.

PyTorch is a requirement but is deliberately left unpinned here: clusters install the CUDA
build of their site first; `make test` installs the pinned CPU wheel from requirements/.
"""

from setuptools import find_packages, setup

setup(
    name="hpcdiff",
    version="0.1.0",
    description="Distributed HPC training and sampling of diffusion models on large scientific grids",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["hpcdiff", "hpcdiff.*"]),
    install_requires=["torch>=2.4", "tensordict>=0.8", "numpy>=1.24"],
    extras_require={
        "dev": ["pytest>=8", "ruff>=0.6"],
    },
    entry_points={"console_scripts": ["hpcdiff=hpcdiff.cli:main"]},
)
