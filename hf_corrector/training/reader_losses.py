"""Reader-supervised retriever losses: train the retriever towards how much each candidate helps a reader.

No passage is labelled relevant. For each question the retriever scores its K candidates (``scores`` (B, K), the
logits ``<f(x), g(y)> / temperature``) and a reader gives the answer's log-likelihood given each candidate
(``reader_logp`` (B, K), ``log p(answer | question, passage)``). Each loss returns its components, like
:func:`hf_corrector.training.losses.step_losses`, under ``reader_loss``.

* :func:`perplexity_distillation_loss` (``pdist``; Izacard et al., "Atlas: Few-shot Learning with Retrieval
  Augmented Language Models", JMLR 2023, ``gold_score_mode="pdist"``): KL(softmax(reader / tau) || softmax(scores)),
  the reader's posterior held constant. Atlas uses the per-token mean log-likelihood (the negative log-perplexity).
* :func:`emdr2_loss` (``emdr2``; Sachan et al., "End-to-End Training of Multi-Document Reader and Retriever for
  Open-Domain Question Answering", NeurIPS 2021): -log sum_k p_retriever(k) p_reader(answer | k), the marginal
  likelihood of the answer with retrieval as a latent variable over the candidates. Trains the reader too when it
  is not frozen.
* :func:`replug_loss` (``replug``; Shi et al., "REPLUG: Retrieval-Augmented Black-Box Language Models", NAACL 2024,
  LM-supervised retrieval): KL(softmax(scores) || softmax(reader / beta)), retriever first.

Example:
    >>> import torch
    >>> scores = torch.zeros(1, 2, requires_grad=True)
    >>> out = perplexity_distillation_loss(scores, torch.tensor([[-1.0, -3.0]]), reader_temperature=1.0)
    >>> out["reader_loss"].backward()
    >>> bool(scores.grad[0, 0] < 0 < scores.grad[0, 1])  # gradient descent raises the better passage
    True
"""

from __future__ import annotations

import torch

READER_LOSSES = ("none", "pdist", "emdr2", "replug")


def _posterior(reader_logp: torch.Tensor, temperature: float) -> torch.Tensor:
    return (reader_logp.detach().float() / temperature).softmax(dim=-1)


def _entropy_free_kl(target: torch.Tensor, log_pred: torch.Tensor) -> torch.Tensor:
    """sum target * (log target - log pred), mean over questions (0 log 0 = 0)."""
    log_target = target.clamp_min(1e-30).log()
    return (target * (log_target - log_pred)).sum(-1).mean()


def perplexity_distillation_loss(scores: torch.Tensor, reader_logp: torch.Tensor,
                                 reader_temperature: float = 0.1) -> dict[str, torch.Tensor]:
    """Atlas' perplexity distillation: KL(softmax(reader_logp / tau) || softmax(scores)) (reader constant)."""
    target = _posterior(reader_logp, reader_temperature)
    log_pred = scores.float().log_softmax(dim=-1)
    return {"reader_loss": _entropy_free_kl(target, log_pred)}


def emdr2_loss(scores: torch.Tensor, reader_logp: torch.Tensor) -> dict[str, torch.Tensor]:
    """EMDR^2: -log sum_k softmax(scores)_k exp(reader_logp_k); ``reader_logp`` keeps its graph (joint reader)."""
    joint = scores.float().log_softmax(dim=-1) + reader_logp.float()
    return {"reader_loss": -torch.logsumexp(joint, dim=-1).mean()}


def replug_loss(scores: torch.Tensor, reader_logp: torch.Tensor, reader_temperature: float = 0.1
                ) -> dict[str, torch.Tensor]:
    """REPLUG LSR: KL(softmax(scores) || softmax(reader_logp / beta)) with the LM's distribution held constant."""
    log_pred = scores.float().log_softmax(dim=-1)
    log_lm = (reader_logp.detach().float() / reader_temperature).log_softmax(dim=-1)
    return {"reader_loss": (log_pred.exp() * (log_pred - log_lm)).sum(-1).mean()}


def reader_lm_loss(scores: torch.Tensor, reader_logp: torch.Tensor) -> torch.Tensor:
    """The jointly trained reader's own loss for ``pdist`` / ``replug``: the answer's negative log-likelihood,
    averaged over the candidates with the retriever's (constant) probabilities."""
    weights = scores.detach().float().softmax(dim=-1)
    return -(weights * reader_logp.float()).sum(-1).mean()


def reader_losses(kind: str, scores: torch.Tensor, reader_logp: torch.Tensor, reader_temperature: float,
                  reader_trains: bool = False) -> dict[str, torch.Tensor]:
    """The components of ``kind`` (``pdist`` / ``emdr2`` / ``replug``): ``reader_loss`` (trains the retriever and,
    for ``emdr2``, a jointly trained reader) and, with a jointly trained reader under ``pdist`` / ``replug``,
    ``reader_lm_loss``. Also ``reader_posterior_entropy`` (a diagnostic, no gradient)."""
    if kind == "pdist":
        parts = perplexity_distillation_loss(scores, reader_logp, reader_temperature)
    elif kind == "emdr2":
        parts = emdr2_loss(scores, reader_logp)
    elif kind == "replug":
        parts = replug_loss(scores, reader_logp, reader_temperature)
    else:
        raise ValueError(f"reader_loss must be one of {READER_LOSSES[1:]}, got {kind!r}")
    if reader_trains and kind != "emdr2":
        parts["reader_lm_loss"] = reader_lm_loss(scores, reader_logp)
    with torch.no_grad():
        post = _posterior(reader_logp, reader_temperature)
        parts["reader_posterior_entropy"] = -(post * post.clamp_min(1e-30).log()).sum(-1).mean()
    return parts
