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
    install_requires=["torch>=2.4", "tensordict>=0.8", "numpy>=1.24", "PyYAML>=6", "tqdm>=4.60"],
    extras_require={
        "data": ["netCDF4>=1.6", "cftime>=1.6", "dask>=2024.1", "xarray>=2024.1",
                 "global-land-mask>=1.0", "psutil>=5.9"],
        "distributed": ["deepspeed>=0.15", "mpi4py>=3.1"],
        "profiling": ["nvtx>=0.2.10"],
        "plots": ["matplotlib>=3.7"],
        "dev": ["pytest>=8", "ruff>=0.6"],
        "all": ["netCDF4>=1.6", "cftime>=1.6", "dask>=2024.1", "xarray>=2024.1",
                "global-land-mask>=1.0", "psutil>=5.9", "deepspeed>=0.15", "mpi4py>=3.1",
                "nvtx>=0.2.10", "matplotlib>=3.7", "safetensors>=0.4"],
    },
    entry_points={"console_scripts": ["hpcdiff=hpcdiff.cli:main"]},
)
