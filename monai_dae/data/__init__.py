"""Data helpers: data lists, their full-read checks (checks.py) and the synthetic sample data."""

from monai_dae.data.datalist import check_image_file, labelled_subset, load_datalist
from monai_dae.data.checks import DataCheckError, check_bundle_data, check_entries, check_file
