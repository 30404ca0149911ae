"""Built-in feature extractors: ``grid`` (offline, no weights) and ``torchvision_detector`` (local weights)."""
