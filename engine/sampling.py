"""Token sampling per row: greedy, temperature and top-p, with per-request seeded streams."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.sequence import Sequence

MIN_TEMPERATURE = 1e-5


@dataclass
class RowSampling:
    """Per-row sampling parameters, aligned with the cache's rows."""

    temperatures: torch.Tensor  # [B] float32, 0 = greedy
    top_ps: torch.Tensor  # [B] float32
    generators: list[torch.Generator | None]  # per-request seeded streams
    is_all_greedy: bool

    @classmethod
    def for_seqs(cls, seqs: list[Sequence], device: torch.device) -> RowSampling:
        params = [s.params for s in seqs]
        return cls(
            temperatures=torch.tensor([p.temperature for p in params], device=device),
            top_ps=torch.tensor([p.top_p for p in params], device=device),
            generators=[_generator(p.seed, device) for p in params],
            is_all_greedy=all(p.temperature <= 0 for p in params),
        )

    def cat(self, other: RowSampling) -> RowSampling:
        return RowSampling(
            torch.cat([self.temperatures, other.temperatures]),
            torch.cat([self.top_ps, other.top_ps]),
            self.generators + other.generators,
            self.is_all_greedy and other.is_all_greedy,
        )

    def take(self, rows: list[int]) -> RowSampling:
        """These rows, sharing their generators (a draw advances the same stream)."""
        return self.select(torch.tensor(rows, device=self.temperatures.device), rows)

    def select(self, keep: torch.Tensor, keep_list: list[int]) -> RowSampling:
        temperatures = self.temperatures.index_select(0, keep)
        return RowSampling(
            temperatures,
            self.top_ps.index_select(0, keep),
            [self.generators[i] for i in keep_list],
            not bool((temperatures > 0).any()),
        )


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


def sample(logits: torch.Tensor, sampling: RowSampling) -> torch.Tensor:
    """Next token per row: argmax for greedy rows, temperature/top-p draws for the others."""
    # logits: [B, V] -> tokens: [B]
    if sampling.is_all_greedy:
        return logits.argmax(dim=-1)  # the hot path: no sampling cost when all rows are greedy
    greedy = logits.argmax(dim=-1)
    temperatures = sampling.temperatures.clamp(min=MIN_TEMPERATURE)[:, None]
    probs = torch.softmax(logits.float() / temperatures, dim=-1)
    if bool((sampling.top_ps < 1).any()):
        probs = _top_p_filter(probs, sampling.top_ps)
    drawn = _draw(probs, sampling.generators)
    return torch.where(sampling.temperatures > 0, drawn, greedy)


def _top_p_filter(probs: torch.Tensor, top_ps: torch.Tensor) -> torch.Tensor:
    """Zero the tail beyond each row's nucleus (the top token always stays)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_ps[:, None], 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def _draw(probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """Sample one token per row (exponential race: argmax p / E ~ Categorical(p))."""
    noise = torch.empty_like(probs).exponential_()
    for i, gen in enumerate(generators):
        if gen is not None:  # a seeded request draws from its own stream: batch-invariant
            noise[i].exponential_(generator=gen)
    return (probs / noise).argmax(dim=-1)
