"""Training: arguments, trainer, callbacks, collator, losses and the step's target batch."""

from .callbacks import CacheRefreshCallback, CorrectorFallbackCallback, SamplerMaintenanceCallback
from .collator import CorrectorDataCollator, prepare_train_examples
from .config import CorrectorTrainingArguments
from .losses import corrector_loss, task_loss
from .strategy import NegativeStrategy, SamplerOptions, build_sampler, register_sampler
from .trainer import CorrectorTrainer, CorrectorTrainingModel

__all__ = [
    "CacheRefreshCallback",
    "CorrectorDataCollator",
    "CorrectorFallbackCallback",
    "CorrectorTrainer",
    "CorrectorTrainingArguments",
    "CorrectorTrainingModel",
    "NegativeStrategy",
    "SamplerOptions",
    "SamplerMaintenanceCallback",
    "build_sampler",
    "corrector_loss",
    "prepare_train_examples",
    "register_sampler",
    "task_loss",
]
