"""Models: the dual-encoder retriever and the corrector network, registered with the Auto classes."""

from transformers import AutoConfig, AutoModel

from .corrector import CorrectorConfig, CorrectorModel
from .loading import load_retriever
from .retriever import RetrieverConfig, RetrieverModel, RetrieverOutput

AutoConfig.register(CorrectorConfig.model_type, CorrectorConfig, exist_ok=True)
AutoModel.register(CorrectorConfig, CorrectorModel, exist_ok=True)
AutoConfig.register(RetrieverConfig.model_type, RetrieverConfig, exist_ok=True)
AutoModel.register(RetrieverConfig, RetrieverModel, exist_ok=True)

__all__ = ["CorrectorConfig", "CorrectorModel", "RetrieverConfig", "RetrieverModel", "RetrieverOutput", "load_retriever"]
