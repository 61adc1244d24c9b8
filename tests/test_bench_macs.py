import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobileclip_export.benchmarks.macs import count_macs, weight_bytes


def test_conv_depthwise_linear_exact():
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Flatten(),
        nn.Linear(8 * 16 * 16, 10),
    )
    r = count_macs(m, (torch.rand(1, 3, 16, 16),))
    assert r.macs == 3 * 9 * 8 * 256 + 9 * 8 * 256 + 8 * 256 * 10


def test_attention_matmuls_and_sdpa_exact():
    mha = nn.MultiheadAttention(64, 4, batch_first=True)
    x = torch.rand(2, 10, 64)
    # q,k,v,out projections (4 x 2*10*64*64) + QK^T and AV (2 batches x 4 heads x 10x10x16, twice)
    assert count_macs(mha, (x, x, x)).macs == 4 * 2 * 10 * 64 * 64 + 2 * 2 * 4 * 10 * 10 * 16

    class Sdpa(nn.Module):
        def forward(self, q):
            return F.scaled_dot_product_attention(q, q, q, is_causal=True)

    assert count_macs(Sdpa(), (torch.rand(2, 4, 10, 16),)).macs == 2 * 4 * 10 * 10 * (16 + 16)

    class Mm(nn.Module):
        def forward(self, a):
            return torch.bmm(a, a.transpose(1, 2)) @ a

    assert count_macs(Mm(), (torch.rand(3, 5, 7),)).macs == 3 * 5 * 7 * 5 + 3 * 5 * 5 * 7


def test_weight_bytes_excludes_embeddings_once():
    emb = nn.Embedding(100, 8)
    head = nn.Linear(8, 100, bias=False)
    head.weight = emb.weight  # tied: counted once
    m = nn.Sequential(emb, head)
    total, streamed = weight_bytes(m)
    assert total == 100 * 8 * 4 and streamed == 0


@pytest.mark.parametrize(
    ("model", "encoder", "gmacs"),
    [
        ("mobileclip_s0", "image", 2.38),  # MCi0, reference section 6
        ("mobileclip_s0", "text", 1.32),  # MCt
        ("mobileclip_s1", "text", 2.98),  # base text 12L-512
    ],
)
def test_mobileclip_encoders_match_reference(model, encoder, gmacs):
    from mobileclip_export.models import create_model
    from mobileclip_export.reparam import reparameterize_model

    m = reparameterize_model(create_model(model))
    x = (
        torch.rand(1, 3, m.image_size, m.image_size)
        if encoder == "image"
        else torch.randint(0, 49408, (1, 77), dtype=torch.int32)
    )
    r = count_macs(getattr(m, f"{encoder}_encoder"), (x,))
    assert r.gmacs == pytest.approx(gmacs, rel=0.01)


def test_counts_come_from_pytorchs_flop_counter():
    """PyTorch's own FlopCounterMode is the counter (2 FLOPs per MAC); op families keep their aten names,
    which the Neural Engine estimate splits into convolution and matmul shares."""
    from torch.utils.flop_counter import FlopCounterMode

    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    x = torch.rand(1, 3, 16, 16)
    with FlopCounterMode(display=False) as fc:
        m(x)
    r = count_macs(m, (x,))
    assert 2 * r.macs == fc.get_total_flops()
    assert r.by_op == {"convolution": 3 * 9 * 8 * 256, "addmm": 8 * 256 * 10}
