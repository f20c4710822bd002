"""What the fast ELFATT path is told: the layer (``ElfattSpec``), its LePE
weights (``LepeWeights``) and its declared tuning knobs (``Tuning``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..functional import SDPA_IMPLS

LOCAL_MODES = ("triton", "sdpa")
BACKWARDS = ("fused", "reference")
BOOLS = ("lepe_unroll", "bwd_merge_tiles", "merge_launches", "fast_launch", "cuda_graph")


@dataclass(frozen=True)
class ElfattSpec:
    """One ELFATT layer on one grid, as the kernels see it.

    ``global_heads`` heads (the first ones) are global; with ``global_heads``
    None the single head is split by channels instead: its first
    ``global_channels`` channels are global, the rest local.
    """

    heads: int
    head_dim: int
    global_heads: int | None
    global_channels: int  # global channels of the whole layer (heads split) or of the one head
    block_rows: int

    @property
    def widths(self) -> tuple[int, ...]:
        """Channel widths of the branches' heads: d for head groups; d//2 and d - d//2 for one head."""
        if self.global_heads is not None:
            return (self.head_dim,)
        return (self.global_channels, self.head_dim - self.global_channels)

    @property
    def concat_dim(self) -> int:
        return 1 if self.global_heads is not None else -1

    @property
    def global_count(self) -> int:
        """Heads of the global branch's views (the one split head counts as one)."""
        return self.global_heads if self.global_heads is not None else 1

    @property
    def local_count(self) -> int:
        """Heads of the local branch's views (the one split head counts as one)."""
        return self.heads - self.global_heads if self.global_heads is not None else 1

    def has_global(self) -> bool:
        return self.global_channels > 0

    def has_local(self) -> bool:
        return self.local_count > 0 and self.widths[-1] > 0

    def split(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, h, N, d) -> the global and the local branch's views."""
        if self.global_heads is None:  # one head, split by channels
            return t[..., : self.global_channels], t[..., self.global_channels :]
        return t[:, : self.global_heads], t[:, self.global_heads :]


@dataclass(frozen=True)
class LepeWeights:
    """Both LePE convolutions, weights taps-first (9, channels) contiguous."""

    global_taps: torch.Tensor | None
    global_bias: torch.Tensor | None
    local_taps: torch.Tensor | None
    local_bias: torch.Tensor | None


@dataclass(frozen=True)
class Tuning:
    """The fast path's declared knobs; None picks the default for the case.

    local: ``triton`` (the fused stripe kernel) or ``sdpa`` (torch SDPA on
    uncopied stripe views + a LePE epilogue kernel), with ``sdpa_impl``.
    global_splits: token splits of the context pass (default: about one
    program per SM over batch x heads). ctx_*/out_*/stripe_*: tile sizes,
    warps and pipeline stages of each kernel. lepe_unroll: unroll the LePE's
    3 taps per row (more registers, more loads in flight). backward and bwd_*:
    the backward pass (below); whether the fused one runs: ``fused_backward``.
    merge_launches, fast_launch, cuda_graph: the host side (below).
    """

    local: str = "triton"
    sdpa_impl: str = "auto"
    global_splits: int | None = None
    ctx_bn: int | None = None
    ctx_warps: int = 4
    ctx_stages: int = 3
    out_bm: int | None = None
    out_warps: int = 4
    stripe_bm: int | None = None
    stripe_bn: int | None = None
    stripe_warps: int | None = None
    stripe_stages: int = 2
    lepe_unroll: bool | None = None
    # The backward: ``fused`` (Triton kernels) or ``reference`` (autograd of the
    # plain-PyTorch definition); bwd_*: tiles, warps, splits of the fused one.
    backward: str = "fused"
    bwd_splits: int | None = None
    bwd_red_bm: int | None = None
    bwd_red_warps: int | None = None
    bwd_tile_bm: int | None = None
    bwd_tile_warps: int | None = None
    bwd_kv_bm: int | None = None
    bwd_kv_bn: int | None = None
    bwd_kv_warps: int | None = None
    bwd_q_bm: int | None = None
    bwd_q_bn: int | None = None
    bwd_q_warps: int | None = None
    bwd_stages: int | None = None
    bwd_merge_tiles: bool = False  # the three gradient-tile roles in one launch (with merge_launches)
    # Host side: ``merge_launches`` runs independent roles in one launch (the forward's
    # combine inside the stripe launch; the backward's reductions in one launch and its
    # merges in one: 5 launches instead of 8, 3 with ``bwd_merge_tiles``);
    # ``fast_launch`` launches each compiled kernel directly after its first call
    # (False: triton's JIT launch path every call); ``cuda_graph`` (inference, CUDA):
    # capture the forward once per case and input addresses, then replay it.
    merge_launches: bool = True
    fast_launch: bool = True
    cuda_graph: bool = False

    def __hash__(self) -> int:  # computed once: the fast path hashes its Tuning on every call
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self)))
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self) -> dict:  # string hashes differ between processes: never pickle one
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    def __setstate__(self, state: dict) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)

    @property
    def fused_backward(self) -> bool:
        """Whether the layer's backward runs the fused kernels: asked for (``backward=fused``)
        and possible. It needs each stripe row's log-sum-exp, which only the Triton stripe
        kernel keeps, so with ``local=sdpa`` the reference backward runs."""
        return self.backward == "fused" and self.local == "triton"

    @classmethod
    def from_dict(cls, options: dict | None) -> "Tuning":
        """A Tuning from a plain mapping (a config), or ValueError naming the valid keys and values."""
        options = dict(options or {})
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ValueError(f"unknown ELFATT tuning option(s) {unknown}; valid: {', '.join(names)}")
        if options.get("local", "triton") not in LOCAL_MODES:
            raise ValueError(f"tuning.local={options['local']!r}; valid: {', '.join(LOCAL_MODES)}")
        if options.get("sdpa_impl", "auto") not in SDPA_IMPLS:
            raise ValueError(f"tuning.sdpa_impl={options['sdpa_impl']!r}; valid: {', '.join(SDPA_IMPLS)}")
        if options.get("backward", "fused") not in BACKWARDS:
            raise ValueError(f"tuning.backward={options['backward']!r}; valid: {', '.join(BACKWARDS)}")
        for key, value in options.items():
            if key in ("local", "sdpa_impl", "backward") or value is None:
                continue
            if key in BOOLS:
                if not isinstance(value, bool):
                    raise ValueError(f"tuning.{key}={value!r}; valid: true, false")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"tuning.{key}={value!r}; valid: a positive integer")
        return cls(**options)

    def as_dict(self) -> dict:
        """Only the knobs that differ from the defaults."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default}
