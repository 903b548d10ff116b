import argparse
from dataclasses import dataclass, field

import pytest

from selfmotivated.config import add_config_args, build_config, config_from_args


@dataclass
class Toy:
    name: str = field(default="a", metadata={"help": "a name"})
    steps: int = 3
    rate: float = 0.5
    flag: bool = False
    limit: int | None = None
    tags: tuple[str, ...] = ()


def parse(argv, yaml_values=None):
    parser = argparse.ArgumentParser()
    add_config_args(parser, Toy)
    return config_from_args(Toy, parser.parse_args(argv), yaml_values)


def test_flags_override_yaml_override_defaults():
    assert parse([]) == Toy()
    assert parse([], {"steps": 7, "name": "y"}) == Toy(name="y", steps=7)
    cfg = parse(["--steps", "9", "--flag", "--limit", "4", "--tags", "x", "z"], {"steps": 7, "name": "y"})
    assert cfg == Toy(name="y", steps=9, flag=True, limit=4, tags=("x", "z"))


def test_unknown_key_names_key_and_allowed():
    with pytest.raises(ValueError, match=r"run.yaml: unknown key\(s\) \['stepz'\].*allowed: \['flag'"):
        build_config(Toy, {"stepz": 1}, "run.yaml")


def test_wrong_type_names_key():
    with pytest.raises(ValueError, match="key 'steps' must be int, got 'many'"):
        build_config(Toy, {"steps": "many"})
    with pytest.raises(ValueError, match="key 'flag' must be bool"):
        build_config(Toy, {"flag": "yes"})
    with pytest.raises(ValueError, match="key 'steps' may not be empty"):
        build_config(Toy, {"steps": None})
