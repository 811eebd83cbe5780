"""Learning LycheeDecode's head roles (which KV heads are retrieval heads) with HardKuma gates."""

from lychee_bench.training.trainer import TrainResult, density_target, train_heads

__all__ = ["TrainResult", "density_target", "train_heads"]
