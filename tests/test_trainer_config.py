"""TrainerConfig is the one declaration of the trainer's options: keywords, config= and CLI."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
from torch import nn

import peftsmoothing as ps
from peftsmoothing.commands import train as train_cmd


def toy() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 2))


def test_config_and_keywords_give_the_same_trainer() -> None:
    config = ps.TrainerConfig(sigma=(0.25, 0.5), epochs=3, lr=0.01, loss="consistency",
                              loss_options={"consistency_weight": 20.0})
    by_config = ps.NoiseTrainer(toy(), config=config, progress=False)
    by_keywords = ps.NoiseTrainer(toy(), (0.25, 0.5), epochs=3, lr=0.01, loss="consistency",
                                  consistency_weight=20, progress=False)
    assert by_config.config == by_keywords.config == config
    assert by_config.loss_options == by_keywords.loss_options


def test_config_with_a_changed_keyword_is_an_error() -> None:
    with pytest.raises(TypeError, match=r"also got lr=0\.1.*set it in the config"):
        ps.NoiseTrainer(toy(), config=ps.TrainerConfig(), lr=0.1)
    with pytest.raises(TypeError, match="sigma=0.25, consistency_weight=1.0"):
        ps.NoiseTrainer(toy(), 0.25, config=ps.TrainerConfig(), consistency_weight=1.0)
    # keywords at their defaults and the non-option arguments are fine
    t = ps.NoiseTrainer(toy(), config=ps.TrainerConfig(epochs=1), lr=1e-3, progress=False,
                        metadata={"a": 1}, optimizer=lambda p: __import__("torch").optim.SGD(
                            p, lr=0.1))
    assert t.config.epochs == 1 and t.config.optimizer == "custom"


def test_every_option_is_a_keyword_and_a_flag() -> None:
    fields = [f.name for f in dataclasses.fields(ps.TrainerConfig)]
    import inspect

    assert set(fields) <= set(inspect.signature(ps.NoiseTrainer).parameters)
    parser = argparse.ArgumentParser()
    train_cmd.add_trainer_options(parser)
    flags = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(ps.TrainerConfig):
        assert f.metadata["help"] and flags[f.name].help
        assert "%(default)s" in flags[f.name].help
    assert flags["precision"].choices == ("fp32", "bf16", "fp16")
    args = parser.parse_args([])
    assert train_cmd.trainer_config(args) == ps.TrainerConfig()


def test_config_validation_messages() -> None:
    with pytest.raises(ValueError, match="grad_accum must be an integer >= 1, got True"):
        ps.TrainerConfig(grad_accum=True)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        ps.TrainerConfig(lr=0)
    with pytest.raises(TypeError, match="entropy_weight"):
        ps.TrainerConfig(loss="consistency", loss_options={"eta": 1})
    assert ps.TrainerConfig(sigma=[0.25, 0.5]).sigma == (0.25, 0.5)


def test_an_unknown_trainer_keyword_is_named_with_a_hint() -> None:
    """Options are keywords built from TrainerConfig's fields; a misspelt one is refused."""
    import pytest
    from torch import nn

    import peftsmoothing as ps

    with pytest.raises(TypeError, match=r"unexpected keyword\(s\): epoch \(did you mean 'epochs'"):
        ps.NoiseTrainer(nn.Linear(2, 2), epoch=3)
    trainer = ps.NoiseTrainer(nn.Linear(2, 2), 0.25, grad_accum=2, loss_options=None)
    assert (trainer.config.sigma, trainer.config.grad_accum, trainer.config.loss_options) == (
        0.25, 2, {})  # fmt: skip
