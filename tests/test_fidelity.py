"""The fidelity switches (issue: lineage protocol, reconstruction through Z, no hidden knobs, a
synthetic set with missing modalities): each sets what it says."""

import numpy as np
import pytest
import torch

from cmath_fast import CMATH, CMATHConfig
from cmath_fast.data import make_synthetic
from cmath_fast.reference.layers import ModalityReconstruction
from cmath_fast.training import TrainOptions, apply_protocol, config_for_data, protocol_label
from cmath_fast.training.protocol import SDT_IEMOCAP_CLASS_WEIGHTS
from tests.data.lineage_files import lineage_tuple, write_pickle


def _lineage(tmp_path, layout):
    from cmath_fast.data import load_features
    return load_features(str(write_pickle(tmp_path / "f.pkl", lineage_tuple(layout))))


def test_lineage_protocol_on_iemocap_sets_sdt_settings(tmp_path):
    data = _lineage(tmp_path, "mmgcn-iemocap")
    cfg, _ = config_for_data(data)
    cfg2, opts = apply_protocol("lineage", cfg, TrainOptions(), data)
    assert cfg2.class_weights == pytest.approx(SDT_IEMOCAP_CLASS_WEIGHTS)
    assert cfg2.class_weights[0] == pytest.approx(1 / 0.086747)
    assert cfg2.tau_squared is False and cfg2.detach_teacher is False
    assert opts.max_grad_norm == 0.0 and opts.select_on == "test" and opts.protocol == "lineage"
    assert protocol_label(opts) == "protocol lineage, best test epoch: optimistic"
    # the model really trains with them: the teacher is not detached, the weights are a buffer
    model = CMATH(cfg2.replace(d_model=32, num_heads=2, d_z=16), backend="torch")
    assert torch.allclose(model.class_weights, torch.tensor(SDT_IEMOCAP_CLASS_WEIGHTS, dtype=torch.float32))


@pytest.mark.parametrize("layout", ["mmgcn-meld", "synthetic"])
def test_lineage_protocol_puts_no_class_weights_outside_iemocap(tmp_path, layout):
    data = make_synthetic("iemocap", n_dialogues=4) if layout == "synthetic" else _lineage(tmp_path, layout)
    cfg, _ = config_for_data(data)
    cfg2, _ = apply_protocol("lineage", cfg, TrainOptions(), data)
    assert cfg2.class_weights is None and cfg2.tau_squared is False


def test_explicit_settings_win_over_the_protocol_and_are_labelled(tmp_path):
    data = _lineage(tmp_path, "mmgcn-iemocap")
    cfg, _ = config_for_data(data, overrides={"tau_squared": True})
    cfg2, opts = apply_protocol("lineage", cfg, TrainOptions(select_on="valid"), data,
                                explicit={"tau_squared", "select_on"})
    assert cfg2.tau_squared is True and opts.select_on == "valid"
    assert cfg2.detach_teacher is False and opts.max_grad_norm == 0.0
    assert "given explicitly over the protocol: tau_squared=True, --select-on valid" in protocol_label(opts)


def test_default_protocol_changes_nothing(tmp_path):
    data = make_synthetic("small", n_dialogues=4)
    cfg, _ = config_for_data(data)
    opts = TrainOptions()
    cfg2, opts2 = apply_protocol("cmath-fast", cfg, opts, data)
    assert cfg2 == cfg and opts2.max_grad_norm == 5.0 and opts2.select_on == "valid"
    with pytest.raises(ValueError, match="--protocol"):
        apply_protocol("sdt", cfg, opts, data)


def test_rec_skip_false_decodes_from_z_alone():
    torch.manual_seed(0)
    mask = torch.ones(2, 5, dtype=torch.bool)
    x1, x2 = torch.randn(2, 5, 12), torch.randn(2, 5, 12)
    for skip in (False, True):
        rec = ModalityReconstruction(12, 8, skip=skip).eval()
        assert rec.dec2.in_channels == (32 if skip else 16)
        hook = rec.enc2.register_forward_hook(lambda mod, inp, out: torch.zeros_like(out))
        with torch.no_grad():
            (_, h1, _), (_, h2, _) = rec(x1, mask), rec(x2, mask)
        hook.remove()
        with torch.no_grad():
            _, h1_full, _ = rec(x1, mask)
        if skip:  # the skip carries the input past the zeroed code
            assert (h1 - h2).abs().max() > 1e-3
        else:  # from a zero code every input decodes to the same thing: Z is the only path
            assert torch.equal(h1, h2)
            assert (h1 - h1_full).abs().max() > 1e-3, "zeroing Z must change the reconstruction entirely"


def test_configs_without_rec_skip_mean_the_skip():
    old = CMATHConfig.tiny().to_dict()
    del old["rec_skip"]
    assert CMATHConfig.from_dict(old).rec_skip is True
    model = CMATH(CMATHConfig.from_dict(old), backend="torch")
    assert model.encoders["t"].dec2.in_channels == 4 * old["d_model"]


def test_meld_preset_distils_without_tau_squared():
    cfg = CMATHConfig.meld()
    assert cfg.tau == 8.0 and cfg.tau_squared is False


def test_clip_grad_norm_and_valid_fraction_are_options():
    with pytest.raises(ValueError, match="--clip-grad-norm"):
        TrainOptions(max_grad_norm=-1.0).validate()
    with pytest.raises(ValueError, match="--valid-fraction"):
        TrainOptions(valid_fraction=1.0).validate()
    from cmath_fast.training import selection_split
    data = make_synthetic("small", n_dialogues=40)
    train, sel, _ = selection_split(data, "valid", 0, valid_fraction=0.25)
    assert len(sel) == round(0.25 * len(data.splits["train"])) and not set(train) & set(sel)


def test_missing_preset_rates():
    data = make_synthetic("missing")
    n = sum(len(d) for d in data.dialogues.values())
    zeros = sum(int((np.abs(d.feature(m)).sum(1) == 0).sum()) for d in data.dialogues.values() for m in "tav")
    # about 25 % of utterances damaged, half of them zeros
    assert 0.09 < zeros / n < 0.16, zeros / n
    small = make_synthetic("small")
    assert sum(int((np.abs(d.feature(m)).sum(1) == 0).sum()) for d in small.dialogues.values() for m in "tav") == 0
