"""The ``torchvision_detector`` extractor: torchvision's Faster R-CNN (ResNet-50 FPN) from a local state dict.

It keeps the top ``max_boxes`` detections of each image (score-sorted, after the detector's own NMS) and
describes each box the way the detector's classifier sees it: RoIAlign (``torchvision.ops.roi_align``, through
the model's ``MultiScaleRoIAlign``) over the FPN feature maps, then the box head's two fully connected layers
(fc6, fc7): a 1024-d vector. Labels are the predicted category ids with their scores; their names go to an
objects vocabulary written next to the store. Nothing is ever downloaded: ``weights`` must name a file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mmcore import MMCoreError
from mmcore.data.annotations import read_vocab_txt
from mmcore.data.extract import Extractor, Regions

NAME = "torchvision_detector"


def import_torchvision() -> Any:
    """torchvision, or a clear error saying what to install."""
    import torch

    try:
        import torchvision
        import torchvision.models.detection
    except ImportError as exc:
        raise MMCoreError(f"extractor {NAME!r} needs torchvision, which is not installed ({exc}): pip install "
                          f"torchvision (the release built for your torch {torch.__version__}). It also needs a "
                          "Faster R-CNN state dict on disk (--option weights=PATH); nothing is downloaded. The "
                          "'grid' extractor needs neither") from None
    except Exception as exc:  # noqa: BLE001 - a torchvision built for another torch fails in many ways
        raise MMCoreError(f"extractor {NAME!r}: torchvision is installed but does not load ({type(exc).__name__}: "
                          f"{exc}); install the torchvision release built for your torch {torch.__version__}") from None
    return torchvision


class TorchvisionDetector(Extractor):
    """torchvision Faster R-CNN R50-FPN from local weights: top-N boxes, labels, RoIAlign box-head features."""

    name: ClassVar[str] = NAME
    defaults: ClassVar[dict[str, Any]] = {
        "weights": "",  # a fasterrcnn_resnet50_fpn state dict (.pth/.pt or .safetensors)
        "max_boxes": 36,
        "min_score": 0.0,  # detections below it are dropped before the top-N cut
        "nms": 0.5,  # the detector's per-class NMS IoU threshold
        "categories": "",  # names file, one per line (index = label id); default: COCO's for 91 classes
        "min_size": 800,  # images are resized so the short side is min_size and the long at most max_size
        "max_size": 1333,
        "device": "auto",  # auto | cpu | cuda | cuda:N
    }
    feature_dim = 1024

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        torchvision = import_torchvision()
        import torch
        from torchvision.models.detection import fasterrcnn_resnet50_fpn

        for key in ("max_boxes", "min_size", "max_size"):
            if not isinstance(self.options[key], int) or self.options[key] < 1:
                raise MMCoreError(f"extractor {NAME!r}: option {key} must be a positive integer")
        self.max_boxes = int(self.options["max_boxes"])
        state = _read_state_dict(self.options["weights"])
        classes = state.get("roi_heads.box_predictor.cls_score.weight")
        if classes is None:
            raise MMCoreError(f"extractor {NAME!r}: {self.options['weights']} has no "
                              "'roi_heads.box_predictor.cls_score.weight'; it is not a torchvision Faster R-CNN "
                              "state dict")
        self.categories = _categories(str(self.options["categories"]), int(classes.shape[0]), torchvision)
        # weights=None and weights_backbone=None: build the architecture only; the state dict supplies every value.
        model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=len(self.categories),
                                        box_detections_per_img=self.max_boxes,
                                        box_score_thresh=float(self.options["min_score"]),
                                        box_nms_thresh=float(self.options["nms"]),
                                        min_size=int(self.options["min_size"]), max_size=int(self.options["max_size"]))
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise MMCoreError(f"extractor {NAME!r}: {self.options['weights']} does not fit fasterrcnn_resnet50_fpn: "
                              f"missing {_few(result.missing_keys)}; unexpected {_few(result.unexpected_keys)}")
        device = str(self.options["device"])
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)

    def extract(self, images: Sequence[np.ndarray]) -> list[Regions]:
        """Detect, keep the top ``max_boxes``, and pool each kept box's features."""
        import torch

        with torch.inference_mode():
            tensors = [torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).float().div(255).to(self.device)
                       for im in images]
            sizes = [(int(t.shape[1]), int(t.shape[2])) for t in tensors]
            m = self.model
            batch, _ = m.transform(tensors)
            maps = m.backbone(batch.tensors)
            proposals, _ = m.rpn(batch, maps)
            detections, _ = m.roi_heads(maps, proposals, batch.image_sizes)
            # The same RoIAlign + box head the classifier used, now on the final (kept) boxes.
            pooled = m.roi_heads.box_roi_pool(maps, [d["boxes"] for d in detections], batch.image_sizes)
            vectors = m.roi_heads.box_head(pooled).float().cpu().numpy()
            detections = m.transform.postprocess(detections, batch.image_sizes, sizes)
        out, offset = [], 0
        for det, (h, w) in zip(detections, sizes):
            n = len(det["boxes"])
            boxes = det["boxes"].float().cpu().numpy() / np.array([w, h, w, h], dtype=np.float32)
            out.append(Regions(vectors[offset : offset + n], np.clip(boxes, 0.0, 1.0),
                               obj_ids=det["labels"].cpu().numpy().astype(np.int64),
                               obj_conf=det["scores"].float().cpu().numpy()))
            offset += n
        return out

    def vocabularies(self) -> dict[str, list[str]]:
        """The category names; a one-name attributes list (the detector predicts none; every confidence is 0)."""
        return {"objects": list(self.categories), "attributes": ["none"]}


def _read_state_dict(weights: Any) -> dict[str, Any]:
    import torch

    if not weights:
        raise MMCoreError(f"extractor {NAME!r} needs --option weights=PATH: a fasterrcnn_resnet50_fpn state dict on "
                          "disk (nothing is downloaded)")
    path = Path(str(weights)).expanduser()
    if not path.is_file():
        raise MMCoreError(f"extractor {NAME!r}: weights file {path} not found (option weights)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means a damaged or foreign file
        raise MMCoreError(f"extractor {NAME!r}: cannot read weights file {path}: {type(exc).__name__}: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # torchvision's reference training script saves {"model": ..., "optimizer": ...}
    if not isinstance(state, dict):
        raise MMCoreError(f"extractor {NAME!r}: {path} holds a {type(state).__name__}, not a state dict")
    return state


def _categories(names_file: str, classes: int, torchvision: Any) -> list[str]:
    if names_file:
        path = Path(names_file).expanduser()
        if not path.is_file():
            raise MMCoreError(f"extractor {NAME!r}: categories file {path} not found (option categories)")
        names = read_vocab_txt(path)
    elif classes == 91:
        # The weights enum only holds metadata here: reading it downloads nothing.
        names = list(torchvision.models.detection.FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
    else:
        raise MMCoreError(f"extractor {NAME!r}: the weights have {classes} classes, not COCO's 91; name their "
                          "categories with --option categories=FILE (one name per line, index = label id)")
    if len(names) != classes:
        raise MMCoreError(f"extractor {NAME!r}: {len(names)} category names for {classes} classes")
    return names


def _few(keys: list[str]) -> str:
    return (", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")) or "none"
