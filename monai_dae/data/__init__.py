"""Data helpers: data lists and the synthetic sample data."""

from monai_dae.data.datalist import check_image_file, load_datalist
