"""Data: IDX files, the dataset registry and fetching, preprocessing, partitioners, synthetic data."""
