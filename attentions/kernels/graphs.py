"""``Tuning(cuda_graph=True)``: the inference forward as CUDA graphs, replayed.

One ``GraphReplay`` per plan (one case: shapes, strides, dtypes, tuning)
keeps up to ``capacity`` graphs keyed by the call's input and weight
addresses: a graph reads its inputs where they were at capture, so a call
replays the graph of its own addresses (what a benchmark or a serving loop
that reuses its buffers does) and captures a new one otherwise. Each graph's
output is a static buffer: the tensor a replay returns is overwritten by the
next replay of that graph (copy it to keep it).

It runs eagerly, and says why, where capture is impossible: not CUDA, or a
capture already running (the kernels then join that one); and from then on
for this plan when a capture failed or when the inputs keep moving
(``max_captures`` captures).
"""
from __future__ import annotations

from collections import OrderedDict

import torch


class TorchGraphs:
    """What ``GraphReplay`` asks of torch.cuda (tests hand a fake instead)."""

    def __init__(self):
        self.stream = None

    def unavailable(self) -> str:
        if torch.cuda.is_current_stream_capturing():
            return "cuda_graph: ran inside the caller's capture"
        return ""

    def capture(self, run):
        """(graph, output) of ``run`` captured on a side stream, after one warm-up call
        there (it compiles what is not compiled yet and makes that stream's workspace)."""
        cuda = torch.cuda
        if self.stream is None:
            self.stream = cuda.Stream()
        s, here = self.stream, cuda.current_stream()
        s.wait_stream(here)
        with cuda.stream(s):
            run()
        here.wait_stream(s)
        graph = cuda.CUDAGraph()
        with cuda.graph(graph, stream=s):
            out = run()
        return graph, out


class GraphReplay:
    """Graphs of one plan's inference forward, keyed by the call's addresses."""

    def __init__(self, api=None, capacity: int = 4, max_captures: int = 16):
        self.api = api if api is not None else TorchGraphs()
        self.capacity, self.max_captures = capacity, max_captures
        self.graphs: OrderedDict = OrderedDict()
        self.captures = 0
        self.off = ""  # why graphs stopped for this plan

    def __call__(self, key: tuple, run) -> tuple[torch.Tensor, str]:
        """(output, how it ran): ``replay``, ``captured``, or why it ran eagerly (``run()``)."""
        if self.off:
            return run(), self.off
        why = self.api.unavailable()
        if why:
            return run(), why
        hit = self.graphs.get(key)
        if hit is not None:
            self.graphs.move_to_end(key)
            hit[0].replay()
            return hit[1], "replay"
        if self.captures >= self.max_captures:
            self.off = f"cuda_graph off: {self.captures} captures, the inputs move between calls"
            self.graphs.clear()
            return run(), self.off
        try:
            graph, out = self.api.capture(run)
        except Exception as e:  # noqa: BLE001 - a failed capture runs eagerly, with the reason
            self.off = f"cuda_graph off: capture failed: {type(e).__name__}: {str(e).strip()[:200]}"
            return run(), self.off
        self.captures += 1
        self.graphs[key] = (graph, out)
        if len(self.graphs) > self.capacity:
            self.graphs.popitem(last=False)
        graph.replay()
        return out, "captured"
