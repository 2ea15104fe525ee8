"""The corrector network h: maps a stale cached target embedding g'(y) to an estimate of the current g(y).

Monath et al., "A Fresh Take on Stale Embeddings: Improving Dense Retriever Training with Corrector
Networks" (ICML 2024). The default is a residual MLP, ``h(v) = v + MLP(v)``, whose last layer starts at zero so
that ``h`` is the identity before training. A ``linear`` variant ``h(v) = A v + b`` (A starts as the identity) can
be folded into the query for exact search on a stale index: ``<f(x), A g'(y)> = <A^T f(x), g'(y)>``.

Example:
    >>> import torch
    >>> from hf_corrector import CorrectorConfig, CorrectorModel
    >>> h = CorrectorModel(CorrectorConfig(embedding_dim=8, hidden_dim=16, num_layers=2))
    >>> v = torch.randn(3, 8)
    >>> torch.equal(h(v), v)  # identity at initialisation
    True
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

try:  # absolute and guarded, so this file also works alone as Hub remote code (register_for_auto_class)
    from hf_corrector.errors import CacheMismatchError, ConfigError
except ImportError:  # pragma: no cover - only without the library installed
    CacheMismatchError = ConfigError = ValueError

logger = logging.getLogger(__name__)

CORRECTOR_ARCHITECTURES = ("mlp", "linear")
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


class CorrectorConfig(PreTrainedConfig):
    """Configuration of a :class:`CorrectorModel`.

    Args:
        embedding_dim: dimension d of the cached and the corrected embeddings.
        architecture: ``"mlp"`` (residual MLP, the default) or ``"linear"``.
        hidden_dim: width of the MLP's hidden layers (default ``2 * embedding_dim``).
        num_layers: number of linear layers in the MLP branch (>= 1).
        activation: one of ``gelu``, ``relu``, ``silu``, ``tanh``.
        dropout: dropout between MLP layers.
        retriever_name_or_path: the retriever whose cache this corrector corrects (provenance, used in cards).
    """

    model_type = "target_corrector"

    def __init__(
        self,
        embedding_dim: int = 384,
        architecture: str = "mlp",
        hidden_dim: int | None = None,
        num_layers: int = 2,
        activation: str = "gelu",
        dropout: float = 0.0,
        retriever_name_or_path: str | None = None,
        **kwargs,
    ):
        if architecture not in CORRECTOR_ARCHITECTURES:
            raise ConfigError(f"unknown corrector architecture {architecture!r}; choose one of {CORRECTOR_ARCHITECTURES}")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if int(embedding_dim) <= 0 or int(num_layers) < 1:
            raise ConfigError(f"embedding_dim must be > 0 and num_layers >= 1, got {embedding_dim}, {num_layers}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.embedding_dim = int(embedding_dim)
        self.architecture = architecture
        self.hidden_dim = int(hidden_dim) if hidden_dim else 2 * self.embedding_dim
        self.num_layers = int(num_layers)
        self.activation = activation
        self.dropout = float(dropout)
        self.retriever_name_or_path = retriever_name_or_path
        super().__init__(**kwargs)


class CorrectorModel(PreTrainedModel):
    """The corrector h as a :class:`~transformers.PreTrainedModel` (safetensors, Auto classes, Hub)."""

    config_class = CorrectorConfig
    base_model_prefix = "corrector"
    main_input_name = "embeddings"
    _no_split_modules: list[str] = []

    def __init__(self, config: CorrectorConfig):
        super().__init__(config)
        d = config.embedding_dim
        if config.architecture == "linear":
            self.linear = nn.Linear(d, d)
        else:
            layers: list[nn.Module] = []
            width_in = d
            for i in range(config.num_layers):
                last = i == config.num_layers - 1
                width_out = d if last else config.hidden_dim
                layers.append(nn.Linear(width_in, width_out))
                if not last:
                    layers.append(ACTIVATIONS[config.activation]())
                    if config.dropout > 0:
                        layers.append(nn.Dropout(config.dropout))
                width_in = width_out
            self.mlp = nn.Sequential(*layers)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if not isinstance(module, nn.Linear):
            return
        if self.config.architecture == "linear":
            module.weight.copy_(torch.eye(module.weight.shape[0], dtype=module.weight.dtype))
            module.bias.zero_()
        elif module is self.mlp[-1]:
            module.weight.zero_()  # residual branch starts at 0: h is the identity
            module.bias.zero_()
        else:
            nn.init.kaiming_uniform_(module.weight, a=5**0.5)
            module.bias.zero_()

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Correct a (..., d) tensor of stale embeddings; returns the same shape and dtype."""
        if embeddings.shape[-1] != self.config.embedding_dim:
            raise CacheMismatchError(
                f"corrector expects embeddings of dimension {self.config.embedding_dim}, got {embeddings.shape[-1]}"
            )
        weight = self.linear.weight if self.config.architecture == "linear" else self.mlp[0].weight
        x = embeddings.to(weight.dtype)
        out = self.linear(x) if self.config.architecture == "linear" else x + self.mlp(x)
        return out.to(embeddings.dtype)

    @torch.no_grad()
    def correct(self, embeddings: torch.Tensor, chunk_size: int = 65536) -> torch.Tensor:
        """Apply h to a large (N, d) matrix in chunks without gradients (memory bounded)."""
        device = next(self.parameters()).device
        return torch.cat(
            [self(embeddings[i : i + chunk_size].to(device)) for i in range(0, embeddings.shape[0], chunk_size)]
        ) if embeddings.shape[0] else embeddings.to(device)

    def query_transform(self) -> torch.Tensor | None:
        """For the linear corrector, the matrix A^T with <q, A v + b> = <A^T q, v> + <q, b>; else None.

        For a batch of row vectors ``q`` (B, d), the transformed queries are ``q @ A`` = ``q @ query_transform().T``.
        """
        if self.config.architecture != "linear":
            return None
        return self.linear.weight.detach().T

    @property
    def num_parameters_total(self) -> int:
        return sum(p.numel() for p in self.parameters())
