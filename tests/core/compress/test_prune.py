"""Structured pruning: one graph pattern per test, then real architectures.

The equivalence tests zero exactly half the channels of every prunable group (producer rows,
norm parameters, consumer columns, through the graph's own coupling), prune at 50%, and
require the pruned model to compute the same outputs as the original: a wrong coupling or
offset would change them or break the forward.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.compress.graph import PruningError, build_graph
from core.compress.prune import PruneConfig, _segments, prune
from core.compress.report import count_params


def zero_half(model: nn.Module, example: torch.Tensor) -> None:
    g = build_graph(model, example)
    frozen = g.frozen_roots()
    with torch.no_grad():
        for use in g.uses:
            mod = model.get_submodule(use.module)
            for r, off, n in _segments(g, use.layout):
                if r in frozen or n <= 8:
                    continue
                # each group its own random half, so no two groups share an index pattern
                half = torch.randperm(n, generator=torch.Generator().manual_seed(1000 + r))[
                    : n // 2
                ]
                idx = off + torch.sort(half).values
                # written out here, not imported, so the check stays independent of the code
                transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
                out_dim, in_dim = (1, 0) if transposed else (0, 1)
                if use.role == "consumer":
                    cols = (idx[:, None] * use.factor + torch.arange(use.factor)).flatten()
                    mod.weight.index_fill_(in_dim, cols, 0)
                    continue
                if getattr(mod, "weight", None) is not None:  # a norm without affine has none
                    mod.weight.index_fill_(out_dim if use.role == "producer" else 0, idx, 0)
                if getattr(mod, "bias", None) is not None:
                    mod.bias[idx] = 0


def check_equivalent_after_pruning(model: nn.Module, x: torch.Tensor, **cfg) -> object:
    model.eval()
    zero_half(model, x)
    with torch.no_grad():
        before = model(x)
    n_before = count_params(model)
    report = prune(model, x, PruneConfig(ratio=0.5, **cfg))
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert count_params(model) < n_before
    assert not any("mask" in n for n, _ in model.named_buffers())
    return report


def bn_eval(m: nn.Module) -> nn.Module:
    """Give batch norms non-trivial statistics so equivalence is a real check."""
    g = torch.Generator().manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return m.eval()


def test_conv_bn_relu_chain():
    torch.manual_seed(0)
    m = bn_eval(
        nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 4, 1),
        )
    )
    report = check_equivalent_after_pruning(m, torch.randn(2, 3, 16, 16))
    assert m[0].out_channels == 16 and m[3].in_channels == 16 and m[4].num_features == 16
    assert m[6].out_channels == 4  # the output is never pruned
    assert report.frozen["6"] == "model output"


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.a = nn.Conv2d(32, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.b = nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Conv2d(32, 2, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = self.b(F.relu(self.bn(self.a(x))))
        return self.head(x + y)


def test_residual_addition_couples_both_branches():
    torch.manual_seed(0)
    m = bn_eval(Residual())
    check_equivalent_after_pruning(m, torch.randn(2, 3, 12, 12))
    assert m.stem.out_channels == m.b.out_channels == m.head.in_channels == 16
    assert m.a.out_channels == 16


class UNetSkip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec = nn.Conv2d(32, 16, 3, padding=1)
        self.out = nn.Conv2d(16, 1, 1)

    def forward(self, x):
        e = F.relu(self.enc(x))
        u = self.up(F.relu(self.down(e)))
        return self.out(F.relu(self.dec(torch.cat([e, u], dim=1))))


def test_concatenation_keeps_offsets_for_the_consumer():
    torch.manual_seed(0)
    m = UNetSkip()
    m.up = nn.Upsample(scale_factor=2)
    m.down = nn.Conv2d(16, 16, 3, stride=2, padding=1)
    check_equivalent_after_pruning(m, torch.randn(2, 3, 16, 16))
    assert m.enc.out_channels == 8 and m.dec.in_channels == 16  # 8 + 8 through the concat


@pytest.mark.parametrize("up_channels", [16, 32])
def test_transposed_convolution_slices_its_swapped_weight_dims(up_channels):
    # ConvTranspose weights are (in, out, k, k); with in == out a wrong-dim slice would keep
    # shapes valid and silently compute something else, which the equivalence check catches.
    torch.manual_seed(0)
    m = UNetSkip()
    m.down = nn.Conv2d(16, up_channels, 3, stride=2, padding=1)
    m.up = nn.ConvTranspose2d(up_channels, 16, 2, stride=2)
    check_equivalent_after_pruning(m, torch.randn(2, 3, 16, 16))
    assert m.up.in_channels == up_channels // 2 and m.up.out_channels == 8 == m.up.weight.shape[1]
    from core.models import shrink_to_state_dict

    fresh = UNetSkip()
    fresh.down = nn.Conv2d(16, up_channels, 3, stride=2, padding=1)
    fresh.up = nn.ConvTranspose2d(up_channels, 16, 2, stride=2)
    shrink_to_state_dict(fresh, m.state_dict())
    fresh.load_state_dict(m.state_dict())
    assert fresh.up.in_channels == m.up.in_channels and fresh.up.out_channels == m.up.out_channels


def test_depthwise_convolution_is_sliced_with_its_input():
    torch.manual_seed(0)
    m = bn_eval(
        nn.Sequential(
            nn.Conv2d(3, 32, 1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, groups=32),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 8, 1),
        )
    )
    check_equivalent_after_pruning(m, torch.randn(2, 3, 8, 8))
    assert m[3].groups == m[3].in_channels == m[3].out_channels == 16


def test_grouped_convolution_is_kept_whole_and_reported():
    m = nn.Sequential(
        nn.Conv2d(3, 32, 1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=4),
        nn.ReLU(),
        nn.Conv2d(32, 32, 1),
        nn.ReLU(),
        nn.Conv2d(32, 2, 1),
    )
    report = prune(m, torch.randn(1, 3, 8, 8), PruneConfig(ratio=0.5))
    assert m[2].in_channels == 32 and m[2].groups == 4
    assert "grouped convolution 2" in report.frozen["0"]
    assert m[4].out_channels == 16  # the group after it is still pruned


class FlattenHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 32)
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.out(F.relu(self.fc(torch.flatten(x, 1))))


def test_linear_after_flatten_drops_each_channels_spatial_block():
    torch.manual_seed(0)
    m = FlattenHead()
    check_equivalent_after_pruning(m, torch.randn(2, 1, 8, 8))
    assert m.conv.out_channels == 8 and m.fc.in_features == 8 * 16 and m.fc.out_features == 16


def test_linear_after_global_pooling_and_view():
    class GP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 32, 3)
            self.fc = nn.Linear(32, 5)

        def forward(self, x):
            x = F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1)
            return self.fc(x.view(x.size(0), -1))

    torch.manual_seed(0)
    m = GP()
    check_equivalent_after_pruning(m, torch.randn(2, 3, 9, 9))
    assert m.fc.in_features == 16


def test_excluded_layer_keeps_its_outputs():
    m = nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.Conv2d(32, 2, 1)
    )
    report = prune(m, torch.randn(1, 3, 9, 9), PruneConfig(ratio=0.5, exclude=("2",)))
    assert m[2].out_channels == 32 and m[0].out_channels == 16
    assert report.frozen["2"] == "excluded: 2"


def test_hard_coded_reshape_freezes_the_group_instead_of_breaking():
    class Hard(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 32, 3, padding=1)
            self.fc = nn.Linear(32 * 4, 4)

        def forward(self, x):
            y = self.conv(x)
            return self.fc(y.reshape(y.shape[0] * 8, 32 * 4))

    m = Hard()
    report = prune(m, torch.randn(1, 3, 4, 8), PruneConfig(ratio=0.5))
    assert m.conv.out_channels == 32 and "reshape" in report.frozen["conv"]


def test_untraceable_model_raises_an_error_naming_it():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return self.conv(x)
            return self.conv(-x)

    with pytest.raises(PruningError, match="cannot be traced") as exc:
        prune(Branchy(), torch.randn(1, 3, 8, 8))
    assert "Branchy" in str(exc.value) and "control flow" in str(exc.value)


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale", "taylor"])
def test_importance_criteria_remove_the_weakest_channels(importance):
    torch.manual_seed(0)
    m = bn_eval(
        nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 2, 1))
    )
    with torch.no_grad():  # channels 0..7 are weak under every criterion
        m[0].weight[:8] *= 1e-3
        m[1].weight[:8] *= 1e-3
        m[3].weight[:, :8] *= 1e-3
    if importance == "taylor":
        m(torch.randn(4, 3, 8, 8)).sum().backward()
    keep_w = m[0].weight[8:].detach().clone()
    prune(m, torch.randn(1, 3, 8, 8), PruneConfig(ratio=0.5, importance=importance))
    assert torch.equal(m[0].weight.detach(), keep_w)


def test_taylor_without_gradients_is_a_clear_error():
    m = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 2, 1))
    with pytest.raises(PruningError, match="needs gradients"):
        prune(m, torch.randn(1, 3, 8, 8), PruneConfig(importance="taylor"))


def test_channel_counts_are_rounded_to_multiples():
    m = nn.Sequential(nn.Conv2d(3, 40, 3), nn.ReLU(), nn.Conv2d(40, 2, 1))
    prune(m, torch.randn(1, 3, 8, 8), PruneConfig(ratio=0.5, round_to=8))
    assert m[0].out_channels == 24  # 20 rounded up to a multiple of 8


def test_torchvision_resnet18_halved_is_3x_cheaper_and_equivalent():
    import torchvision

    torch.manual_seed(0)
    m = bn_eval(torchvision.models.resnet18(num_classes=10))
    report = check_equivalent_after_pruning(m, torch.randn(1, 3, 32, 32))
    assert report.mac_ratio >= 3.0 and m.fc.out_features == 10


def test_torchvision_mobilenet_v3_small_with_squeeze_excitation():
    import torchvision

    torch.manual_seed(0)
    m = bn_eval(torchvision.models.mobilenet_v3_small(num_classes=10))
    report = check_equivalent_after_pruning(m, torch.randn(1, 3, 64, 64))
    assert report.mac_ratio > 1.5


def test_timm_resnet_with_its_own_layers():
    import timm

    torch.manual_seed(0)
    m = bn_eval(timm.create_model("resnet10t", num_classes=5, pretrained=False))
    report = check_equivalent_after_pruning(m, torch.randn(1, 3, 32, 32))
    assert report.mac_ratio >= 3.0


class UNet3D(nn.Module):
    """A small 3D U-Net with skip concatenations, input (B, 1, D, H, W)."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()

        def block(i, o):
            return nn.Sequential(
                nn.Conv3d(i, o, 3, padding=1, bias=False), nn.BatchNorm3d(o), nn.ReLU(inplace=True)
            )

        self.e1, self.e2, self.mid = block(1, c), block(c, 2 * c), block(2 * c, 2 * c)
        self.d2, self.d1 = block(4 * c, c), block(2 * c, c)
        self.out = nn.Conv3d(c, 2, 1)

    def forward(self, x):
        e1 = self.e1(x)
        e2 = self.e2(F.max_pool3d(e1, 2))
        m = self.mid(F.max_pool3d(e2, 2))
        d2 = self.d2(torch.cat([F.interpolate(m, scale_factor=2.0), e2], dim=1))
        d1 = self.d1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], dim=1))
        return self.out(d1)


def test_3d_unet_with_skip_concatenations():
    torch.manual_seed(0)
    m = bn_eval(UNet3D())
    report = check_equivalent_after_pruning(m, torch.randn(1, 1, 8, 8, 8))
    assert m.d2[0].in_channels == 32 and report.mac_ratio >= 3.0


@pytest.mark.parametrize("affine", [True, False])
def test_monai_dynunet_with_instance_norms_and_skip_concatenations(affine):
    """Instance norms normalise each channel alone, so they are sliced with their conv (a
    boundary there would leave the whole U-Net unpruned); the transposed up-convolutions and
    the encoder skips concatenated into the decoder keep their offsets."""
    from monai.networks.nets import DynUNet

    torch.manual_seed(0)
    m = DynUNet(3, 1, 2, [3] * 4, [1, 2, 2, 2], [2, 2, 2], filters=[16, 32, 32, 64],
                norm_name=("instance", {"affine": affine}))  # fmt: skip
    with torch.no_grad():  # non-trivial affine parameters, so slicing them is checked
        for mod in m.modules():
            if isinstance(mod, nn.InstanceNorm3d) and affine:
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    report = check_equivalent_after_pruning(m, torch.randn(1, 1, 16, 16, 16))
    assert m.input_block.conv1.conv.out_channels == 8
    if affine:
        assert m.input_block.norm1.weight.shape == (8,)
    # deepest decoder block: up-convolution (32) + encoder skip (32), each halved
    assert m.upsamples[0].conv_block.conv1.conv.in_channels == 16 + 16
    assert report.mac_ratio >= 3.0


def test_global_scope_prunes_unequally_but_to_the_overall_ratio():
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Conv2d(64, 2, 1)
    )
    with torch.no_grad():
        m[0].weight *= 10  # the first layer matters more
        m[2].weight[:, :] *= 1.0
    prune(m, torch.randn(1, 3, 12, 12), PruneConfig(ratio=0.5, scope="global"))
    assert m[0].out_channels != m[2].out_channels


def test_bn_sparsity_training_shrinks_bn_scales_and_bn_scale_pruning_uses_them():
    from core.compress.prune import BNSparsityTrainer
    from core.reference.digits import DigitsCNN, load_digits_splits
    from core.train import Trainer, TrainerConfig, seed_everything

    data = load_digits_splits(8, seed=0)["train"]
    # SGD as in Network Slimming: Adam's normalised steps cap how fast the penalty can act
    cfg = TrainerConfig(
        max_epochs=2, batch_size=32, progress="off", optimizer={"name": "sgd", "lr": 0.05}
    )

    def gamma_l1(m) -> float:
        return sum(
            float(b.weight.detach().abs().sum())
            for b in m.modules()
            if isinstance(b, nn.BatchNorm2d)
        )

    seed_everything(0)
    plain = DigitsCNN(16)
    Trainer(plain, cfg).fit(data)
    seed_everything(0)
    sparse = DigitsCNN(16)
    trainer = BNSparsityTrainer(sparse, cfg, l1=0.1)
    batch = data[:8]
    base, _, _ = Trainer(sparse, cfg).compute_loss(sparse.train(), batch)
    penalised, _, _ = trainer.compute_loss(sparse, batch)
    torch.testing.assert_close(penalised - base, 0.1 * torch.tensor(gamma_l1(sparse)))
    trainer.fit(data)
    assert gamma_l1(sparse) < 0.7 * gamma_l1(plain)
    report = prune(sparse, torch.zeros(1, 1, 8, 8), PruneConfig(ratio=0.5, importance="bn_scale"))
    assert report.params_after < report.params_before


class SharedLinear(nn.Module):
    """One linear applied to two branches: its input columns must fit both call sites."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(16, 32)
        self.shared, self.out = nn.Linear(32, 32), nn.Linear(64, 4)

    def forward(self, x):
        p = F.relu(self.shared(F.relu(self.a(x))))
        q = F.relu(self.shared(F.relu(self.b(x))))
        return self.out(torch.cat([p, q], 1))


class SharedNorm(nn.Module):
    """One batch norm applied to the outputs of two convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 32, 3), nn.Conv2d(3, 32, 3)
        self.bn, self.out = nn.BatchNorm2d(32), nn.Conv2d(64, 2, 1)

    def forward(self, x):
        return self.out(torch.cat([self.bn(self.a(x)), F.relu(self.bn(self.b(x)))], 1))


@pytest.mark.parametrize(
    ("model_cls", "shape"), [(SharedLinear, (4, 16)), (SharedNorm, (2, 3, 9, 9))]
)
def test_module_called_at_two_places_is_sliced_for_both(model_cls, shape):
    torch.manual_seed(0)
    m = bn_eval(model_cls())
    check_equivalent_after_pruning(m, torch.randn(*shape))
    # the two producers feeding the shared module are pruned alike, and still pruned
    assert m.a.weight.shape[0] == m.b.weight.shape[0] == 16


def test_module_called_on_different_layouts_is_frozen_with_its_reason():
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 16, 1), nn.Conv2d(3, 16, 1)
            self.c = nn.Conv2d(3, 32, 1)
            self.shared, self.out = nn.Conv2d(32, 32, 1), nn.Conv2d(64, 2, 1)

        def forward(self, x):
            y = self.shared(torch.cat([self.a(x), self.b(x)], 1))  # two groups of 16
            z = self.shared(self.c(x))  # one group of 32
            return self.out(torch.cat([y, z], 1))

    torch.manual_seed(0)
    m = Mixed().eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        before = m(x)
    report = prune(m, x, PruneConfig(ratio=0.5))
    with torch.no_grad():
        torch.testing.assert_close(m(x), before)
    assert m.shared.in_channels == 32 and m.shared.out_channels == 32
    assert "called on inputs with different channel layouts" in report.frozen["shared"]


class Softmaxed(nn.Module):
    def __init__(self, how: str, dim: int) -> None:
        super().__init__()
        self.how, self.dim = how, dim
        self.trunk = nn.Conv2d(3, 32, 1)  # prunable, so the check sees a smaller model
        self.conv, self.sm = nn.Conv2d(32, 32, 3), nn.Softmax(dim=dim)
        self.lsm = nn.LogSoftmax(dim=dim)
        self.out = nn.Conv2d(32, 2, 1)

    def forward(self, x):
        y = self.conv(F.relu(self.trunk(x)))
        if self.how == "module":
            y = self.sm(y)
        elif self.how == "log_module":
            y = self.lsm(y)
        elif self.how == "function":
            y = F.softmax(y, dim=self.dim)
        else:
            y = y.log_softmax(self.dim)
        return self.out(y)


@pytest.mark.parametrize("how", ["module", "log_module", "function", "method"])
def test_softmax_over_channels_is_a_boundary(how):
    torch.manual_seed(0)
    m = Softmaxed(how, dim=1)
    report = check_equivalent_after_pruning(m, torch.randn(2, 3, 8, 8))
    assert m.conv.out_channels == 32
    assert "softmax over channels" in report.frozen["conv"]


def test_softmax_over_space_still_prunes():
    torch.manual_seed(0)
    m = Softmaxed("function", dim=-1)
    check_equivalent_after_pruning(m, torch.randn(2, 3, 8, 8))
    assert m.conv.out_channels == 16


def test_layer_norm_over_channels_is_a_boundary():
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.LayerNorm(32), nn.Linear(32, 32), nn.Linear(32, 4)
    )
    with torch.no_grad():  # non-trivial affine parameters
        m[2].weight.uniform_(0.5, 1.5)
        m[2].bias.uniform_(-0.5, 0.5)
    report = check_equivalent_after_pruning(m, torch.randn(4, 8))
    assert m[0].out_features == 32 and "layer norm over channels" in report.frozen["0"]
    assert m[3].out_features == 16  # the group after the norm is pruned


class Split(nn.Module):
    """CSP-style: split a feature map in two along channels, transform one half, rejoin."""

    def __init__(self, aligned: bool) -> None:
        super().__init__()
        self.aligned = aligned
        self.a, self.b = nn.Conv2d(3, 32, 1), nn.Conv2d(3, 32, 1)
        self.one = nn.Conv2d(3, 64, 1)
        self.c, self.out = nn.Conv2d(32, 32, 1), nn.Conv2d(64, 2, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1) if self.aligned else self.one(x)
        p, q = y.chunk(2, dim=1) if self.aligned else torch.split(y, 32, dim=1)
        return self.out(torch.cat([F.relu(self.c(p)), q], 1))


def test_split_along_channel_groups_gives_each_piece_its_layout():
    torch.manual_seed(0)
    m = Split(aligned=True)
    check_equivalent_after_pruning(m, torch.randn(2, 3, 6, 6))
    assert m.a.out_channels == m.b.out_channels == m.c.in_channels == 16


def test_split_through_one_group_freezes_it_and_reports_every_layer():
    torch.manual_seed(0)
    m = Split(aligned=False)
    report = check_equivalent_after_pruning(m, torch.randn(2, 3, 6, 6))
    assert m.one.out_channels == 64 and "cuts a channel group" in report.frozen["one"]
    assert m.c.in_channels == 32 and m.c.out_channels == 16  # its own outputs still prune


def test_exclude_naming_no_module_is_an_error_with_a_suggestion():
    from core.errors import ConfigError

    m = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 2, 1))
    with pytest.raises(ConfigError, match=r"exclude names no module of the model: no\.such\.layer"):
        prune(m, torch.randn(1, 3, 8, 8), PruneConfig(exclude=("no.such.layer",)))
    with pytest.raises(ConfigError, match=r"e\.g\. 2"):
        prune(m, torch.randn(1, 3, 8, 8), PruneConfig(exclude=("2.",)))
