"""What `models.drafter` names: a neural model, or a drafter that needs no training.

    "path/or/hub-id"        a causal LM with the target's vocabulary (a folder or a hub id)
    "ngram" | "ngram:n=N"   prompt lookup: match the last N..1 tokens of the text against the text so far
                            (prompt included) and propose the token that followed the latest match
    "truncated:layers=L"    the target's own first L decoder layers plus its final norm and head
                            (a self-drafter: no second model, no training; usually a poor one)
    "quantized" | "quantized:bits=8" | "quantized:bits=4"
                            the target itself with its products' weights in int8, a scale per row
                            (a self-drafter: half the bytes of bf16, nearly always the target's token;
                            dsi_mpi/backends/quantize.py), or in int4 with a scale per row and 32 inputs

Parsed here, before anything is loaded, so a bad parameter is a one-line config error.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class DrafterSpecError(ValueError):
    pass


@dataclass(frozen=True)
class DrafterSpec:
    kind: str  # "model", "ngram", "truncated" or "quantized"
    model: str = ""  # the folder or hub id ("model" only)
    params: dict = field(default_factory=dict)

    @property
    def needs_weights(self) -> bool:
        """Does rank 0 load a neural model for it (and can hf_assisted use it as the assistant)?"""
        return self.kind != "ngram"


KINDS = {"ngram": {"n": 3}, "truncated": {"layers": None}, "quantized": {"bits": 8}}


def parse_drafter(text: str) -> DrafterSpec:
    kind, _, rest = text.partition(":")
    if kind not in KINDS:
        return DrafterSpec("model", model=text)
    params = dict(KINDS[kind])
    for item in filter(None, (part.strip() for part in rest.split(","))):
        name, eq, value = item.partition("=")
        if name not in params or not eq:
            raise DrafterSpecError(
                f"models.drafter {text!r}: unknown parameter {item!r} for a {kind} drafter "
                f"(known: {', '.join(params)}; write {kind}:{next(iter(params))}=...)"
            )
        try:
            params[name] = int(value)
        except ValueError:
            raise DrafterSpecError(f"models.drafter {text!r}: {name} must be an integer, got {value!r}") from None
    if kind == "ngram" and params["n"] < 1:
        raise DrafterSpecError(f"models.drafter {text!r}: the n-gram size n must be >= 1, got {params['n']}")
    if kind == "truncated" and (params["layers"] is None or params["layers"] < 1):
        raise DrafterSpecError(f"models.drafter {text!r}: a truncated drafter needs layers=L with L >= 1")
    if kind == "quantized" and params["bits"] not in (8, 4):
        raise DrafterSpecError(
            f"models.drafter {text!r}: a quantized drafter has bits=8 or bits=4, not {params['bits']}"
        )
    return DrafterSpec(kind, params=params)
