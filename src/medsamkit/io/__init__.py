"""File input/output."""

from .image2d import RASTER_SUFFIXES, ImageReadError, read_image_2d, write_png

__all__ = ["RASTER_SUFFIXES", "ImageReadError", "read_image_2d", "write_png"]
