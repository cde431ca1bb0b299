import pytest
import torch

from dni_pipeline.core.errors import UserError
from dni_pipeline.trainer.network import LayerSpec, arch_starts, build_stages, parse_arch, stage_output_shapes


def test_presets_and_repeat_syntax():
    assert parse_arch("fcn3") == [LayerSpec("fc", 256)] * 3
    assert parse_arch("conv32p*2,fc64") == [LayerSpec("conv", 32, True)] * 2 + [LayerSpec("fc", 64)]


@pytest.mark.parametrize("arch", ["", "fc", "fc0", "mlp256", "fc64,conv32", "fc64p"])
def test_bad_arch_is_a_user_error(arch):
    with pytest.raises(UserError, match="arch"):
        parse_arch(arch)


def test_split_is_contiguous_balanced_and_head_on_last_stage():
    stages = build_stages(parse_arch("fc8*5"), (4,), 3, num_stages=2, seed=0)
    linears = [[m.out_features for m in s.modules() if isinstance(m, torch.nn.Linear)] for s in stages]
    assert linears == [[8, 8, 8], [8, 8, 3]]  # 5 layers -> 3 + 2, then the 3-class head


def test_one_stage_more_than_blocks_puts_the_head_on_its_own():
    layers = parse_arch("fc8*3")
    stages = build_stages(layers, (4,), 3, num_stages=4, seed=0)
    linears = [[m.out_features for m in s.modules() if isinstance(m, torch.nn.Linear)] for s in stages]
    assert linears == [[8], [8], [8], [3]]
    assert stage_output_shapes(layers, (4,), 4) == [(8,), (8,), (8,)]  # the head's stage is fed the last block's output
    assert arch_starts("fc8*3", 4) == [1, 2, 3] and arch_starts("fc8*3", 3) == [1, 2]


def test_same_seed_same_weights_and_stage_shapes():
    layers = parse_arch("conv4p,conv4,fc16")
    a = build_stages(layers, (1, 8, 8), 10, 3, seed=7)
    b = build_stages(layers, (1, 8, 8), 10, 3, seed=7)
    for sa, sb in zip(a, b):
        for pa, pb in zip(sa.parameters(), sb.parameters()):
            assert torch.equal(pa, pb)
    x = torch.rand(5, 1, 8, 8)
    h0 = a[0](x)
    assert stage_output_shapes(layers, (1, 8, 8), 3) == [tuple(h0.shape[1:]), (4, 4, 4)]
    assert a[2](a[1](h0)).shape == (5, 10)


def test_more_stages_than_layers_is_refused():
    with pytest.raises(UserError, match="--stages 5 does not fit 3 hidden layers and the head"):
        build_stages(parse_arch("fcn3"), (4,), 2, num_stages=5, seed=0)
