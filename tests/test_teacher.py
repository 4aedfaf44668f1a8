"""The REPA teacher: truncated forward equals the full model's hidden state; frozen; bad names."""
import pytest
import torch

from textldm.errors import UserError
from textldm.teacher import Teacher, load_tokenizer


@pytest.mark.parametrize("layer", [-3, -1, 2])
def test_truncated_teacher_matches_full_hidden_states(tiny_model_dir, layer):
    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(2, 100, (2, 9))
    with torch.no_grad():
        ref = full(ids, output_hidden_states=True).hidden_states
    n = full.config.num_hidden_layers
    teacher = Teacher(tiny_model_dir, layer)
    k = layer if layer >= 0 else n + 1 + layer
    assert teacher.blocks_run == k and len(list(teacher.model.base_model.layers)) == k
    if k < n:  # HF applies the final norm to the last entry only
        assert torch.allclose(teacher(ids), ref[layer], atol=1e-5)
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.model.training


def test_teacher_errors(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="out of range"):
        Teacher(tiny_model_dir, -9)
    with pytest.raises(UserError, match="cannot load teacher"):
        Teacher(str(tmp_path / "nothing-here"))
    with pytest.raises(UserError, match="cannot load tokenizer"):
        load_tokenizer(str(tmp_path / "nothing-here"))
