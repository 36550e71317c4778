"""Networks the meta-learners adapt. Any nn.Module works; these are the standard ones."""
from fastadapt.models.mlp import MLP

__all__ = ["MLP"]

from fastadapt.models.conv4 import Conv4  # noqa: E402

__all__ += ["Conv4"]

from fastadapt.models.policies import CategoricalMLPPolicy, GaussianMLPPolicy, RecurrentPolicy, mlp_policy  # noqa: E402

__all__ += ["GaussianMLPPolicy", "CategoricalMLPPolicy", "RecurrentPolicy", "mlp_policy"]

from fastadapt.models.darts import DiscreteNetwork, Genotype, SearchNetwork, SearchSpace  # noqa: E402

__all__ += ["DiscreteNetwork", "Genotype", "SearchNetwork", "SearchSpace"]
