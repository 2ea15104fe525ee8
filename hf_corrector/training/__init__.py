"""Training: arguments, trainer, collator, losses and negative selection."""

from .collator import CorrectorDataCollator, prepare_train_examples
from .config import CorrectorTrainingArguments
from .losses import corrector_loss, task_loss
from .sampling import Selection, select_negatives
from .trainer import CacheRefreshCallback, CorrectorTrainer, CorrectorTrainingModel

__all__ = [
    "CacheRefreshCallback",
    "CorrectorDataCollator",
    "CorrectorTrainer",
    "CorrectorTrainingArguments",
    "CorrectorTrainingModel",
    "Selection",
    "corrector_loss",
    "prepare_train_examples",
    "select_negatives",
    "task_loss",
]
