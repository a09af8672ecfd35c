import pytest

from priormim.config import PretrainConfig, load_config, parse_overrides
from priormim.errors import UserError


def test_packaged_recipes_load_and_differ_as_documented():
    mae = load_config("mae")
    vaso = load_config("vasomim")
    guid = load_config("vasomim_guidance_only")
    cons = load_config("vasomim_consistency_only")
    assert mae.masking.name == "random" and not mae.consistency.enabled
    assert vaso.masking.name == "anatomy" and vaso.consistency.enabled and vaso.consistency.weight == 1.0
    assert vaso.masking.kwargs == {"beta_start": 0.0, "beta_end": 0.5}
    assert guid.masking.name == "anatomy" and not guid.consistency.enabled
    assert cons.masking.name == "random" and cons.consistency.enabled


def test_overrides_nested_and_typed():
    cfg = load_config("mae", ["optim.epochs=3", "optim.blr=1e-3", "model.encoder_kwargs={depth: 2}", "data.images=/x"])
    assert cfg.optim.epochs == 3 and cfg.optim.blr == 1e-3
    assert cfg.model.encoder_kwargs == {"depth": 2}
    assert cfg.data.images == "/x"
    assert cfg.model.encoder == "vit_tiny_patch16_224"  # untouched keys keep the recipe's value


def test_int_accepted_for_float():
    assert load_config(None, ["optim.blr=1"]).optim.blr == 1.0


@pytest.mark.parametrize("item,needle", [
    ("optim.epoch=3", "optim.epoch"),
    ("optim.epochs=three", "optim.epochs"),
    ("model.norm_pix_loss=3", "model.norm_pix_loss"),
    ("bogus=1", "bogus"),
])
def test_unknown_key_or_wrong_type_is_one_line_user_error(item, needle):
    with pytest.raises(UserError) as e:
        load_config("mae", [item])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("optim: [1, 2\n")
    with pytest.raises(UserError) as e:
        load_config(p)
    assert "bad.yaml" in str(e.value)
    with pytest.raises(UserError):
        load_config(tmp_path / "missing.yaml")


def test_override_syntax():
    with pytest.raises(UserError):
        parse_overrides(["novalue"])
    assert parse_overrides(["a.b=1", "a.c=x"]) == {"a": {"b": 1, "c": "x"}}


def test_roundtrip_plain_data():
    cfg = load_config("vasomim")
    d = cfg.to_dict()
    assert isinstance(d["model"], dict)
    assert load_config(None, d) == cfg
    assert isinstance(PretrainConfig(), PretrainConfig)
