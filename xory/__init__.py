"""xory: this or that? Folders of labelled photos -> a classifier you can serve, faces first."""
from .features.faces import Face
from .explain import Explanation
from .model import Model, Prediction, load

__all__ = ["load", "Model", "Prediction", "Face", "Explanation"]
__version__ = "0.1.0"
