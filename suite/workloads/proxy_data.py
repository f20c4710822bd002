"""Datasets the suite generates itself, for accuracy proxies that need no download.

- ``pathfinder``: Pathfinder-like images (after Linsley et al. 2018 / LRA).
  Curves are smooth random walks (the turning rate itself drifts), folded back
  into the image at the borders. Two square markers sit either on the two ends
  of one curve (label 1) or on one end each of two different curves (label
  0); the other curves are distractors. Telling the two apart means following
  a curve across the image: a long-range question. Everything scales with the
  image side S: curve length 0.75*S, S//16 distractors, marker side
  2*(S//32)+1, line width max(1, S//64). Markers are at least S/4 apart in both
  classes, so their distance gives no clue. Curves may cross, as in Pathfinder.
- ``match``: two glyphs from a fixed alphabet, one in the left third of the
  image and one in the right third: are they the same glyph? A long-range
  comparison that small models learn within a few hundred steps (the CPU
  default), where Pathfinder needs far longer training.
- ``listops``: ListOps in the style of Long Range Arena (Nangia & Bowman 2018):
  nested MAX / MIN / MED / SM (sum modulo 10) over digits 0-9, e.g.
  ``[MAX 2 9 [MIN 4 7 ] 0 ]`` = 9. MED of an even count is the floor of the
  mean of the two middle values (``int(numpy.median)`` in the original).
  Ten classes, balanced by rejection sampling. The padded token sequence is
  laid out row by row on a grid so that attentions that need (H, W) apply.

Every generator is a pure function of its arguments (``seed`` included):
the same call gives the same tensors on any machine.
"""
from __future__ import annotations

import math

import numpy as np
import torch

# -- pathfinder --------------------------------------------------------------------


def _fold(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect coordinates into [lo, hi] (a triangle wave), so a curve stays continuous."""
    span = hi - lo
    t = np.mod(x - lo, 2 * span)
    return lo + span - np.abs(t - span)


def _curve(rng: np.random.Generator, size: int, margin: float) -> np.ndarray:
    """Points (n, 2) of one smooth curve, 0.5 px apart, inside [margin, size-1-margin].

    The turning rate is an AR(1) process (correlation length S/8 px, stationary
    sd 2/S rad per step), so curvature varies along the curve but does not
    pile up into spirals, and curves look alike at every S.
    """
    n = int(2 * 0.75 * size)
    k = math.exp(-0.5 / (size / 8))
    sd = 2.0 / size
    e = rng.normal(0.0, sd * math.sqrt(1 - k * k), n)
    e[0] = rng.normal(0.0, sd)
    powers = k ** np.arange(n)
    omega = powers * np.cumsum(e / powers)  # omega_t = k * omega_{t-1} + e_t
    theta = rng.uniform(0, 2 * math.pi) + np.cumsum(omega)
    start = rng.uniform(margin, size - 1 - margin, 2)
    pts = start + np.cumsum(0.5 * np.stack([np.cos(theta), np.sin(theta)], 1), 0)
    return _fold(pts, margin, size - 1 - margin)


def _draw(img: np.ndarray, pts: np.ndarray, width: int) -> None:
    ij = np.rint(pts).astype(np.int64)
    size = img.shape[0]
    for dy in range(width):
        for dx in range(width):
            img[np.clip(ij[:, 1] + dy, 0, size - 1), np.clip(ij[:, 0] + dx, 0, size - 1)] = 255


def _marker(img: np.ndarray, p: np.ndarray, r: int) -> None:
    x, y = np.rint(p).astype(np.int64)
    img[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1] = 255


def pathfinder(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (n, 1, size, size) uint8 and labels (n,) int64; exactly half label 1 (n even)."""
    if size < 16:
        raise ValueError(f"pathfinder image_size={size} is too small; valid: 16 or more")
    rng = np.random.default_rng([seed, 1])
    labels = rng.permutation(np.arange(n) % 2)
    r, width = max(1, size // 32), max(1, size // 64)
    margin = r + 1.0
    distractors = max(1, size // 16)
    imgs = np.zeros((n, 1, size, size), dtype=np.uint8)
    for i in range(n):
        while True:
            curves = [_curve(rng, size, margin) for _ in range(1 + distractors)]
            a = curves[0][0]
            b = curves[0][-1] if labels[i] else curves[1][rng.integers(2) * -1]
            if np.abs(a - b).max() >= size / 4:
                break
        img = imgs[i, 0]
        for c in curves:
            _draw(img, c, width)
        _marker(img, a, r)
        _marker(img, b, r)
    return torch.from_numpy(imgs), torch.from_numpy(labels.astype(np.int64))


# -- match ------------------------------------------------------------------------
def glyphs(side: int, count: int = 10) -> np.ndarray:
    """The task's fixed alphabet: ``count`` distinct side x side binary glyphs with
    the same number of lit pixels (so no single glyph's brightness tells its
    identity apart from the others'). Fixed (seed 0): part of the task, not the data."""
    rng = np.random.default_rng([0, 3, side])
    lit = side * side // 2
    out: list[np.ndarray] = []
    while len(out) < count:
        g = np.zeros(side * side, dtype=np.uint8)
        g[rng.choice(side * side, lit, replace=False)] = 255
        if not any((g == o).all() for o in out):
            out.append(g)
    return np.stack(out).reshape(count, side, side)


def match(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (n, 1, size, size) uint8 and labels (n,): 1 when the glyph in
    the left third equals the glyph in the right third (exactly half, n even).

    Glyph side max(3, size // 8); glyphs sit on a grid of glyph-sized cells (so
    with a patch of the glyph side each glyph is one token), each in a random
    cell of the leftmost / rightmost third of the cell columns, so the two are
    at least size/3 apart. Deciding needs the two
    far-apart places to interact: a per-token feature summed over tokens and
    fed to a linear head cannot tell same from different.
    """
    if size < 24:
        raise ValueError(f"match image_size={size} is too small; valid: 24 or more")
    side = max(3, size // 8)
    alphabet = glyphs(side)
    rng = np.random.default_rng([seed, 3])
    labels = rng.permutation(np.arange(n) % 2)
    imgs = np.zeros((n, 1, size, size), dtype=np.uint8)
    cells = size // side  # glyphs sit on a grid of side x side cells
    cols = max(1, cells // 3)
    for i in range(n):
        a = int(rng.integers(len(alphabet)))
        b = a if labels[i] else int((a + rng.integers(1, len(alphabet))) % len(alphabet))
        for glyph, c0 in ((a, 0), (b, cells - cols)):
            x = (c0 + int(rng.integers(cols))) * side
            y = int(rng.integers(cells)) * side
            imgs[i, 0, y : y + side, x : x + side] = alphabet[glyph]
    return torch.from_numpy(imgs), torch.from_numpy(labels.astype(np.int64))


# -- listops ------------------------------------------------------------------------
OPS = ("MAX", "MIN", "MED", "SM")
PAD, CLOSE = 0, 15
VOCAB = 16  # 0 pad, 1..10 digits 0..9, 11..14 "[MAX" "[MIN" "[MED" "[SM", 15 "]"
_OP_TOKEN = {op: 11 + i for i, op in enumerate(OPS)}


def evaluate(tree) -> int:
    """Value of an expression tree: a digit, or (op, [subtrees])."""
    if isinstance(tree, int):
        return tree
    op, args = tree
    vals = [evaluate(a) for a in args]
    if op == "MAX":
        return max(vals)
    if op == "MIN":
        return min(vals)
    if op == "SM":
        return sum(vals) % 10
    if op == "MED":
        s = sorted(vals)
        m = len(s) // 2
        return s[m] if len(s) % 2 else (s[m - 1] + s[m]) // 2
    raise ValueError(f"unknown ListOps operator {op!r}; valid: {', '.join(OPS)}")


def parse(text: str):
    """``"[MAX 2 9 [MIN 4 7 ] 0 ]"`` -> ("MAX", [2, 9, ("MIN", [4, 7]), 0])."""
    words = text.replace("]", " ] ").split()
    stack: list[tuple[str, list]] = []
    result = None
    for w in words:
        if w.startswith("["):
            stack.append((w[1:], []))
        elif w == "]":
            node = stack.pop()
            if stack:
                stack[-1][1].append(node)
            else:
                result = node
        else:
            value = int(w)
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
    if stack or result is None:
        raise ValueError(f"unbalanced ListOps expression: {text!r}")
    return result


def to_text(tree) -> str:
    if isinstance(tree, int):
        return str(tree)
    op, args = tree
    return f"[{op} " + " ".join(to_text(a) for a in args) + " ]"


def to_tokens(tree) -> list[int]:
    if isinstance(tree, int):
        return [tree + 1]
    op, args = tree
    out = [_OP_TOKEN[op]]
    for a in args:
        out += to_tokens(a)
    return out + [CLOSE]


def from_tokens(tokens) -> str:
    """Token ids (padding ignored) back to text: the inverse of ``to_tokens``."""
    names = {**{i + 1: str(i) for i in range(10)}, **{t: f"[{op}" for op, t in _OP_TOKEN.items()}, CLOSE: "]"}
    return " ".join(names[int(t)] for t in tokens if int(t) != PAD)


def _random_tree(rng: np.random.Generator, depth: int, max_depth: int, max_args: int):
    if depth >= max_depth or (depth > 0 and rng.random() < 0.35):
        return int(rng.integers(10))
    op = OPS[rng.integers(len(OPS))]
    return op, [_random_tree(rng, depth + 1, max_depth, max_args) for _ in range(int(rng.integers(2, max_args + 1)))]


def listops(n: int, seq_len: int, seed: int, max_depth: int = 5, max_args: int = 5,
            min_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` token sequences (n, seq_len) int64 padded with 0, labels (n,) in 0..9.

    Expressions longer than ``seq_len`` or shorter than ``min_len`` (default
    seq_len // 4) are rejected, and so is any whose value's class is full:
    each class gets n // 10 examples (the first n % 10 classes one more).
    """
    if max_depth < 1 or max_args < 2:
        raise ValueError(f"listops needs max_depth >= 1 and max_args >= 2, got {max_depth}, {max_args}")
    min_len = seq_len // 4 if min_len is None else min_len
    rng = np.random.default_rng([seed, 2])
    quota = [n // 10 + (c < n % 10) for c in range(10)]
    tokens = np.zeros((n, seq_len), dtype=np.int64)
    labels = np.zeros(n, dtype=np.int64)
    filled, tries = 0, 0
    while filled < n:
        tries += 1
        if tries > 1000 * n + 10000:
            raise ValueError(
                f"listops could not fill its classes (seq_len={seq_len}, max_depth={max_depth}, "
                f"max_args={max_args}); raise seq_len or lower max_depth/max_args"
            )
        tree = _random_tree(rng, 0, max_depth, max_args)
        toks = to_tokens(tree)
        if not min_len <= len(toks) <= seq_len:
            continue
        y = evaluate(tree)
        if quota[y] == 0:
            continue
        quota[y] -= 1
        tokens[filled, : len(toks)] = toks
        labels[filled] = y
        filled += 1
    order = rng.permutation(n)
    return torch.from_numpy(tokens[order]), torch.from_numpy(labels[order])


def square_side(seq_len: int) -> int:
    """The grid side for a sequence laid out row by row, or ValueError naming nearby squares."""
    side = math.isqrt(seq_len)
    if side * side != seq_len or side < 1:
        lo, hi = max(1, side) ** 2, (side + 1) ** 2
        raise ValueError(f"seq_len={seq_len} is not a square number (tokens fill a side x side grid); "
                         f"valid seq_len near it: {lo}, {hi}")
    return side
