"""The one table of FPE split rules: every row does what its flags say, and a new row is picked up
by split_and_prune, the checks, the CLI and the reports without touching them."""

import subprocess
import sys

import pytest
import torch

from sparse_expansion.cli import main
from sparse_expansion.errors import UsageError
from sparse_expansion.fpe import rules, studies
from sparse_expansion.fpe.mlp import MaskedMLP, MLPConfig, count_nonzeros
from sparse_expansion.fpe.split import split_and_prune

CLAUSES = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]


def weight(h=6, d_in=16, seed=0):
    return torch.randn(h, d_in, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(rules.RULES))
def test_every_rule_partitions_as_its_row_says(name):
    rule = rules.RULES[name]
    inputs = rules.SplitInputs(torch.Generator().manual_seed(3), seed=3, clauses=CLAUSES)
    masks = rule.partition(weight(), 4, inputs)
    assert masks.shape == (6, 4, 16) and masks.dtype == torch.bool
    per_edge = masks.sum(dim=1)
    assert bool((per_edge >= 1).all())  # no rule drops a parent's input before pruning
    if rule.disjoint:
        assert bool((per_edge == 1).all())
    else:
        assert bool((per_edge > 1).any())
    again = rule.partition(weight(), 4, rules.SplitInputs(torch.Generator().manual_seed(3), seed=3, clauses=CLAUSES))
    assert torch.equal(masks, again)  # the seed decides everything
    assert rule.summary and "\n" not in rule.summary


def test_random_partition_deals_equal_groups():
    masks = rules.random_partition(weight(), 4, rules.SplitInputs(torch.Generator().manual_seed(0)))
    assert torch.equal(masks.sum(dim=2), torch.full((6, 4), 4))  # 16 inputs, 4 per child, every parent


def test_a_rule_that_deals_no_inputs_splits_narrow_layers():
    torch.manual_seed(0)
    narrow = MaskedMLP(MLPConfig(3, (4,), 2))
    wide, _ = split_and_prune(narrow, 4, "dense-wide")
    assert wide.config.hidden == (16,) and count_nonzeros(wide) == count_nonzeros(narrow)
    with pytest.raises(ValueError, match="fewer than alpha"):
        split_and_prune(narrow, 4, "random")


def test_check_rules_refuses_in_one_line():
    assert rules.check_rules(["random", "clause"], task="dnf", task_has_clauses=True) == ("random", "clause")
    cases = [
        ([], "at least one rule"),
        (["random", "magic"], "unknown --rule magic"),
        (["random", "random"], "more than once"),
        (["clause"], "needs a task with clauses"),
    ]
    for names, message in cases:
        with pytest.raises(UsageError, match=message):
            rules.check_rules(names, task="digits", task_has_clauses=False)


def test_studies_rule_lists_come_from_the_registry():
    for study in studies.STUDIES.values():
        assert set(study.rules) <= set(rules.RULES)
    with pytest.raises(ValueError, match="unknown split rule 'radnom'"):
        rules.known(("random", "radnom"))


def test_report_order_is_dense_then_the_registry():
    names = ["dense-wide", "zzz", "random", rules.DENSE, "clause"]
    assert sorted(names, key=rules.report_order) == [rules.DENSE, "random", "clause", "dense-wide", "zzz"]


def test_a_new_row_is_all_a_new_rule_needs(monkeypatch, capsys):
    def halves(weight, alpha, inputs):  # first half of the inputs to child 0, the rest to child 1..
        h, d_in = weight.shape
        masks = torch.zeros(h, alpha, d_in, dtype=torch.bool)
        masks[:, torch.arange(d_in) * alpha // d_in, torch.arange(d_in)] = True
        return masks

    new = rules.SplitRule("halves", halves, "contiguous blocks of inputs")
    monkeypatch.setitem(rules.RULES, "halves", new)
    torch.manual_seed(0)
    parent = MaskedMLP(MLPConfig(8, (3,), 1))
    wide, info = split_and_prune(parent, 2, "halves", prune=False)
    assert info.child_masks[0][0, 0].tolist() == [True] * 4 + [False] * 4
    assert torch.equal(wide.layers[0].effective_weight()[0, :4], parent.layers[0].weight[0, :4])
    assert rules.check_rules(["halves"], task="digits", task_has_clauses=False) == ("halves",)
    config = studies.FPEStudyConfig(task="dnf", rules=("random", "halves")).check()
    assert config.rules_to_run() == ("random", "halves")
    with pytest.raises(SystemExit):
        main(["fpe", "--help"])
    assert "halves: contiguous blocks of inputs" in " ".join(capsys.readouterr().out.split())


def test_reading_the_registries_does_not_import_torch():
    code = ("import sys, argparse\n"
            "from sparse_expansion.commands import fpe\n"
            "fpe.register(argparse.ArgumentParser().add_subparsers())\n"
            "from sparse_expansion.fpe.studies import FPEStudyConfig\n"
            "FPEStudyConfig(task='dnf', study='point').check()\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
