"""xory: this or that? Folders of labelled photos -> a classifier you can serve, faces first."""
from .features.faces import Face
from .model import Model, Prediction, load

__all__ = ["load", "Model", "Prediction", "Face"]
__version__ = "0.1.0"
