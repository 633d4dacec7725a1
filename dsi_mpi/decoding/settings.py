"""What one run of one algorithm on one prompt needs besides the prompt: the arguments of
`SpeculativeDecoder.generate` and `baselines.run_baseline`, in one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from dsi_mpi.io.config import DecodingConfig, RuntimeConfig

ADAPTIVE = 0  # RunSettings.lookahead (and RunRecord.lookahead) of adaptive speculation: k chosen per block


@dataclass(frozen=True)
class RunSettings:
    max_new_tokens: int
    lookahead: int = 1  # k: drafts per verification task (si, dsi; hf_assisted's assistant tokens), or ADAPTIVE
    verifiers: int = 0  # dsi: verifier ranks used (0: all)
    max_blocks_ahead: int = 0  # dsi: unresolved blocks allowed ahead of the committed text (0: verifiers + 1)
    nonsi_thread: bool = True  # dsi: a block of no drafts at each rejection (needs 2+ verifiers)
    stop_at_eos: bool = True
    key: int = 0  # keys the random streams of sampling: the prompt's index
    ngram: int = 0  # hf_prompt_lookup: HF's max_matching_ngram_size (0: HF's default)

    @property
    def adaptive(self) -> bool:
        return self.lookahead == ADAPTIVE

    @classmethod
    def from_config(cls, decoding: DecodingConfig, runtime: RuntimeConfig, **resolved) -> RunSettings:
        """The configured settings plus what the job resolved: lookahead (0: adaptive; the planner's, for
        "auto") and verifiers, and per prompt key and ngram."""
        return cls(
            max_new_tokens=decoding.max_new_tokens,
            max_blocks_ahead=runtime.max_blocks_ahead,
            nonsi_thread=runtime.nonsi_thread,
            stop_at_eos=decoding.stop_at_eos,
            **resolved,
        )
