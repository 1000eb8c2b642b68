"""Names, lookup, listing and info: repzoo's names and the authors' variant tables."""
import pytest

import repzoo
from repzoo.registry import name_alias, normalize_name, register_model

REPVGG_ORDER = [
    "RepVGG-A0", "RepVGG-A1", "RepVGG-A2", "RepVGG-B0", "RepVGG-B1", "RepVGG-B1g2", "RepVGG-B1g4",
    "RepVGG-B2", "RepVGG-B2g2", "RepVGG-B2g4", "RepVGG-B3", "RepVGG-B3g2", "RepVGG-B3g4", "RepVGG-D2se",
]


def test_repvgg_names_sorted_as_a_person_expects():
    assert repzoo.list_models("RepVGG-*") == REPVGG_ORDER
    assert "RepVGGplus-L2pse" in repzoo.list_models()


@pytest.mark.parametrize("spelling", ["RepVGG-B1g4", "repvgg_b1g4", "REPVGG B1G4", "RepVGG.B1g4", "repvggb1g4"])
def test_forgiving_lookup(spelling):
    assert repzoo.get_model_entry(spelling).name == "RepVGG-B1g4"


@pytest.mark.parametrize("name, alias", [
    ("RepOpt-VGG-B1", "repopt_vgg_b1"), ("RepGhostNet-0.5x", "repghostnet_0_5x"),
    ("OREPA-ResNet-18", "orepa_resnet_18"), ("RepVGGplus-L2pse", "repvggplus_l2pse"),
])
def test_alias_rule(name, alias):
    assert name_alias(name) == alias


def test_every_entry_has_its_alias_and_resolves_by_it():
    for name in repzoo.list_models():
        entry = repzoo.get_model_entry(name)
        assert entry.alias == name_alias(name)
        assert repzoo.get_model_entry(entry.alias).name == name


def test_pattern_matches_alias_and_is_case_insensitive():
    assert repzoo.list_models("repvgg_b3*") == ["RepVGG-B3", "RepVGG-B3g2", "RepVGG-B3g4"]
    assert repzoo.list_models("*d2SE") == ["RepVGG-D2se"]


def test_unknown_name_lists_closest_and_says_what_to_do():
    with pytest.raises(repzoo.UnknownModelError) as exc:
        repzoo.create_model("RepVGG-B4g4")
    msg = str(exc.value)
    assert isinstance(exc.value, repzoo.RepZooError) and isinstance(exc.value, KeyError)
    assert "RepVGG-B3g4" in msg and "repzoo list" in msg


def test_register_refuses_a_colliding_or_misnamed_entry():
    with pytest.raises(ValueError, match="collides"):
        @register_model("repvgg-a0", family="x", paper="y")
        def repvgg_a0(**kw):
            raise AssertionError
    with pytest.raises(ValueError, match="must be named"):
        @register_model("Some-New-Net", family="x", paper="y")
        def wrong_name(**kw):
            raise AssertionError
    assert normalize_name("Some-New-Net") not in {normalize_name(n) for n in repzoo.list_models()}


def test_model_info_reports_both_forms():
    info = repzoo.model_info("repvgg_b1g2")
    assert info["name"] == "RepVGG-B1g2" and info["family"] == "RepVGG"
    assert info["params_train"] == 45_782_376 and info["params_deploy"] == 41_360_104  # counted on the authors' create_RepVGG_B1g2 (DingXiaoH/RepVGG @ eae7c52, repvgg.py)
    assert info["input_size"] == (3, 224, 224)
    assert info["config"]["num_blocks"] == (4, 6, 16, 1)
    assert info["paper"].startswith("https://arxiv.org/")
    assert repzoo.model_info("RepVGG-D2se")["pretrained_cfg"]["input_size"] == (3, 320, 320)
