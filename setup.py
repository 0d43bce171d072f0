"""Package metadata for hpcdiff.

PyTorch is a requirement but is deliberately left unpinned here: clusters install the CUDA
build of their site first; `make test` installs the pinned CPU wheel from requirements/.
DeepSpeed is built from source and imports torch while building: install torch first, then
`pip install --no-build-isolation hpcdiff` (docs/install.md).
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
    # A bare install runs every command (docs/install.md): the NetCDF stack, DeepSpeed, mpi4py
    # and nvtx are what hpcdiff is for. Extras add PNG plots,
    # TensorBoard scalars, an MPI library, dev tools.
    install_requires=["torch>=2.4", "tensordict>=0.8", "numpy>=1.24", "PyYAML>=6", "tqdm>=4.60",
                      "netCDF4>=1.6", "cftime>=1.6", "dask>=2024.1", "psutil>=5.9",
                      "global-land-mask>=1.0", "deepspeed>=0.15", "mpi4py>=3.1",
                      "nvtx>=0.2.10"],
    extras_require={
        "plots": ["matplotlib>=3.7"],
        "tensorboard": ["tensorboard>=2.14"],
        "mpi": ["mpich>=4.1"],
        "dev": ["pytest>=8", "pytest-xdist>=3", "ruff>=0.6", "hypothesis>=6", "mypy>=1.10"],
        "all": ["matplotlib>=3.7", "tensorboard>=2.14", "mpich>=4.1", "pytest>=8",
                "ruff>=0.6", "hypothesis>=6", "mypy>=1.10"],
    },
    entry_points={"console_scripts": ["hpcdiff=hpcdiff.cli:main"]},
)
