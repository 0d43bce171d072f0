"""Generation from trained runs: multi-diffusion sampling to NetCDF and plots."""
