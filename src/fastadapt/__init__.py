"""fastadapt: meta-learning ("learning to learn") in PyTorch."""
__version__ = "0.1.0"


def __getattr__(name: str):
    # fastadapt.FewShotClassifier / FewShotDetector without importing torch and the training stack on `import fastadapt`
    if name == "FewShotClassifier":
        from fastadapt.classifier import FewShotClassifier

        return FewShotClassifier
    if name == "FewShotDetector":
        from fastadapt.detector import FewShotDetector

        return FewShotDetector
    raise AttributeError(f"module 'fastadapt' has no attribute {name!r}")
