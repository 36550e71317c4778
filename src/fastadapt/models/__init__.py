"""Networks the meta-learners adapt. Any nn.Module works; these are the standard ones."""
from fastadapt.models.mlp import MLP

__all__ = ["MLP"]
