"""Training and validation on image folders (``repzoo validate``; the data helpers).

Everything heavy (timm's data pipeline, PIL, scikit-learn) is imported where it is used.
"""
from .data import ImageFolderIndex, scan_image_folder, write_digits_folder
from .loop import train
from .recipes import RECIPES, Recipe, get_recipe
from .validate import ValidationResult, validate

__all__ = ["ImageFolderIndex", "scan_image_folder", "write_digits_folder", "ValidationResult", "validate", "train",
           "RECIPES", "Recipe", "get_recipe"]
