"""How to learn: one file per meta-learning method, all on the ``MetaLearner`` interface."""
from fastadapt.algorithms.base import MetaLearner, per_task_loss, per_task_metric
from fastadapt.algorithms.maml import MAML
from fastadapt.algorithms.metasgd import MetaSGD
from fastadapt.algorithms.pretrained import Pretrained
from fastadapt.algorithms.reptile import Reptile

__all__ = ["MetaLearner", "MAML", "MetaSGD", "Pretrained", "Reptile", "per_task_loss", "per_task_metric"]

from fastadapt.algorithms.knn import NearestNeighbours  # noqa: E402
from fastadapt.algorithms.matching import MatchingNetworks  # noqa: E402
from fastadapt.algorithms.protonet import PrototypicalNetworks  # noqa: E402

__all__ += ["MatchingNetworks", "NearestNeighbours", "PrototypicalNetworks"]

from fastadapt.algorithms.mann import MANN  # noqa: E402
from fastadapt.algorithms.metanet import MetaNet  # noqa: E402
from fastadapt.algorithms.snail import SNAIL  # noqa: E402

__all__ += ["MANN", "MetaNet", "SNAIL"]

from fastadapt.algorithms.baseline import Baseline  # noqa: E402
from fastadapt.algorithms.baseline_pp import BaselinePlusPlus  # noqa: E402
from fastadapt.algorithms.logreg import EmbeddingLogisticRegression  # noqa: E402

__all__ += ["Baseline", "BaselinePlusPlus", "EmbeddingLogisticRegression"]
from fastadapt.algorithms.base import RLMetaLearner  # noqa: E402
from fastadapt.algorithms.bandit_baselines import UCB1, BayesOptimal, RandomArms, ThompsonSampling  # noqa: E402
from fastadapt.algorithms.maml_rl import MAMLRL  # noqa: E402
from fastadapt.algorithms.metasgd_rl import MetaSGDRL  # noqa: E402
from fastadapt.algorithms.pretrained_rl import PretrainedPolicy  # noqa: E402
from fastadapt.algorithms.rl2 import RL2  # noqa: E402

__all__ += ["RLMetaLearner", "MAMLRL", "MetaSGDRL", "PretrainedPolicy", "RL2", "RandomArms", "UCB1", "ThompsonSampling",
            "BayesOptimal"]

from fastadapt.algorithms.metanas import MetaNAS  # noqa: E402
from fastadapt.algorithms.tnas import TNAS  # noqa: E402

__all__ += ["MetaNAS", "TNAS"]
