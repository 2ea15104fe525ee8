"""Training: arguments, trainer, callbacks, collator, losses and the step's target batch."""

from .callbacks import CacheRefreshCallback, CorrectorFallbackCallback, SamplerMaintenanceCallback
from .collator import CorrectorDataCollator, prepare_train_examples
from .config import CorrectorTrainingArguments
from .hub_push import push_checkpoint
from .losses import corrector_loss, task_loss
from .model_card import ModelCardCallback, card_data_from_trainer, strategy_and_citations, write_model_cards
from .strategy import NegativeStrategy, SamplerOptions, build_sampler, register_sampler
from .trainer import CorrectorTrainer, CorrectorTrainingModel

__all__ = [
    "CacheRefreshCallback",
    "CorrectorDataCollator",
    "CorrectorFallbackCallback",
    "CorrectorTrainer",
    "CorrectorTrainingArguments",
    "CorrectorTrainingModel",
    "ModelCardCallback",
    "NegativeStrategy",
    "SamplerOptions",
    "SamplerMaintenanceCallback",
    "build_sampler",
    "card_data_from_trainer",
    "corrector_loss",
    "prepare_train_examples",
    "push_checkpoint",
    "register_sampler",
    "strategy_and_citations",
    "task_loss",
    "write_model_cards",
]
