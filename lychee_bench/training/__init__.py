"""Learning LycheeDecode's head roles (which KV heads are retrieval heads) with HardKuma gates."""

from lychee_bench.training.trainer import TrainConfig, TrainResult, density_target, train_heads

__all__ = ["TrainConfig", "TrainResult", "density_target", "train_heads"]
