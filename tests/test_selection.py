"""Choosing the units of a model by name."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
from helpers import demo_model
from torch import nn

from lightning_mosaic.selection import called_units, candidates, check_names, select_modules


def tiny_llava() -> nn.Module:
    """The tiny LlavaForConditionalGeneration of the dotted-path example (no download)."""
    example = Path(__file__).parent.parent / "examples" / "llava_dotted_modules.py"
    return runpy.run_path(str(example))["LlavaModule"]().model


class Holder(nn.Module):
    """A LightningModule-like root holding a Hugging Face model as ``self.model``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


def test_auto_selects_children_that_own_parameters_in_order():
    model = demo_model()
    model.loss_scale = nn.Identity()  # no parameters: not a unit
    units = select_modules(model)
    assert list(units) == ["vision", "audio", "projector", "llm"]
    assert units["vision"] is model.vision


def test_auto_descends_through_a_single_wrapper_child():
    inner = nn.Module()
    inner.encoder = nn.Linear(2, 2)
    inner.decoder = nn.Linear(2, 2)
    root = Holder(inner)
    assert list(select_modules(root)) == ["model.encoder", "model.decoder"]


def test_auto_on_a_model_without_children_selects_nothing():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(1))

    assert select_modules(Flat()) == {}


def test_auto_stops_at_a_single_leaf():
    root = Holder(nn.Linear(2, 2))
    assert select_modules(root) == {"model": root.model}


def test_frozen_children_are_candidates():
    model = demo_model(freeze_vision=True)
    assert "vision" in select_modules(model)


def test_dotted_paths_into_hugging_face_llava():
    root = Holder(tiny_llava())
    names = ["model.model.vision_tower", "model.model.multi_modal_projector", "model.model.language_model"]
    units = select_modules(root, names)
    assert list(units) == names
    assert units["model.model.vision_tower"] is root.model.model.vision_tower


def test_unknown_name_lists_candidates_at_its_level():
    root = Holder(tiny_llava())
    with pytest.raises(ValueError) as err:
        select_modules(root, ["model.model.vision_towr"])
    message = str(err.value)
    assert "unknown module 'model.model.vision_towr'" in message
    assert "in 'model.model' there is no submodule 'vision_towr'" in message
    assert "Did you mean 'model.model.vision_tower'?" in message
    assert "'model.model.multi_modal_projector'" in message and "'model.model.language_model'" in message


def test_unknown_top_level_name_lists_top_level_candidates():
    with pytest.raises(
        ValueError,
        match=r"in DemoMultimodalModel there is no submodule 'text'.*"
        r"Valid candidates: 'vision', 'audio', 'projector', 'llm'",
    ):
        select_modules(demo_model(), ["vision", "text"])


def test_listed_twice():
    with pytest.raises(
        ValueError, match=r"module 'llm' is listed twice in `modules`: \['llm', 'vision', 'llm'\]"
    ):
        select_modules(demo_model(), ["llm", "vision", "llm"])


def test_same_module_under_two_names():
    model = demo_model()
    model.text_encoder = model.audio  # shared module, registered twice
    with pytest.raises(ValueError, match=r"module 'text_encoder' is listed twice.*same module as 'audio'"):
        select_modules(model, ["audio", "text_encoder"])


@pytest.mark.parametrize("order", [["llm", "llm.blocks"], ["llm.blocks", "llm"]])
def test_parent_with_its_child(order):
    with pytest.raises(
        ValueError,
        match=r"lists 'llm' together with its own submodule 'llm.blocks'.*"
        r"'llm.embed', 'llm.blocks', 'llm.norm', 'llm.head'",
    ):
        select_modules(demo_model(), order)


@pytest.mark.parametrize(
    ("names", "error", "message"),
    [
        ("vision", TypeError, r"got the string 'vision'; did you mean \['vision'\]\?"),
        (["vision", 3], TypeError, r"must hold module names \(str\), got int: 3"),
        ([], ValueError, r"`modules` is an empty list"),
        (["vision", ""], ValueError, r"invalid module name ''"),
        (["model..vision"], ValueError, r"invalid module name 'model..vision'"),
        (42, TypeError, r"must be None or a list of module names, got int: 42"),
    ],
)
def test_check_names(names, error, message):
    with pytest.raises(error, match=message):
        check_names(names)


def test_candidates():
    model = demo_model()
    assert candidates(model) == ["vision", "audio", "projector", "llm"]
    assert candidates(model, "projector") == ["projector.fc1", "projector.fc2"]


def test_units_whose_forward_never_ran_give_way_to_their_parts_that_did():
    """A model that calls ``transformer.blocks[i]`` itself: the blocks become units; a head used only
    in validation stays; a part that never ran is left out."""
    transformer = nn.Module()
    transformer.embed = nn.Linear(2, 2)
    transformer.blocks = nn.ModuleList(nn.Linear(2, 2) for _ in range(2))
    transformer.unused = nn.Linear(2, 2)
    root = nn.Module()
    root.transformer, root.val_head, root.head = transformer, nn.Linear(2, 2), nn.Linear(2, 2)
    units = select_modules(root)
    assert list(units) == ["transformer", "val_head", "head"]
    ran = {id(m) for m in (transformer.embed, *transformer.blocks, root.head)}
    assert list(called_units(units, ran)) == [
        "transformer.embed",
        "transformer.blocks.0",
        "transformer.blocks.1",
        "val_head",
        "head",
    ]
    assert called_units(units, ran)["transformer.blocks.1"] is transformer.blocks[1]
    assert list(called_units(units, ran | {id(transformer)})) == list(units), "its forward ran: kept"
