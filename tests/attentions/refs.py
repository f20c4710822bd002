"""Independent float64 references shared by the attention tests."""
import torch


def ref_attention(q, k, v, scale=None):
    """softmax(q k^T * scale) v in float64, one (batch, head) at a time; (B, h, N, d)."""
    q, k, v = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            s = q[b, h] @ k[b, h].T * scale
            p = torch.exp(s - s.max(dim=1, keepdim=True).values)
            out[b, h] = (p / p.sum(dim=1, keepdim=True)) @ v[b, h]
    return out


def qkv(B=2, h=3, N=10, d=8, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, N, d, generator=g, dtype=dtype) for _ in range(3)]


def bnhd_attention(q, k, v, scale):
    """What a fake kernel computes on (B, N, h, d) inputs."""
    assert q.dim() == 4
    return ref_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale).transpose(1, 2).to(q.dtype)


# -- asking an attention whether a case can run (Attention.reasons), by kind ----------
def reasons_of(m, kind: str, device=None, dtype=torch.float32, hw=(8, 8), batch=1) -> list[str]:
    """The texts of ``m``'s reasons of ``kind`` for this case."""
    dev = torch.device(device) if device is not None else None
    return [r.text for r in m.reasons(hw=hw, device=dev, dtype=dtype, batch=batch) if r.kind == kind]


def check_grid(m, hw) -> None:
    """ValueError with the first ``invalid`` reason for grid ``hw`` (none: returns)."""
    invalid = reasons_of(m, "invalid", hw=hw)
    if invalid:
        raise ValueError(invalid[0])
