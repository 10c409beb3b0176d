"""Config files and values handled with bounds: aliases, duplicate keys, byte order marks, what a path
is, messages of bounded length, integers within int64.

Real files in tmp_path (a FIFO made with os.mkfifo, /dev/zero as it is), read by config.load_config.
"""
import os
import time

import pytest
from hypothesis import given, settings, strategies as st

from krum_mpi import config
from krum_mpi.errors import MAX_MESSAGE, ConfigError

INT_KEYS = [f"{s}.{k}" for s, body in config.DEFAULTS.items() for k, v in body.items()
            if isinstance(v, int) and not isinstance(v, bool)]


def laughs(levels: int, key: str = "name") -> str:
    """A YAML 'billion laughs' as the value of run.<key>: a list whose item i lists item i-1 ten times,
    so its last item stands for 10**levels strings (any walk over the value, a repr, expands it)."""
    items = ["    - &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    items += [f"    - &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return f"run:\n  {key}:\n" + "\n".join(items) + "\n"


def assert_one_short_line(err, *words):
    msg = str(err.value)
    assert "\n" not in msg and len(msg) <= MAX_MESSAGE, msg[:200]
    for word in words:
        assert word in msg, msg


@pytest.mark.parametrize("levels, key", [(9, "name"), (9, "steps"), (3, "name")])
def test_yaml_alias_bomb_is_refused_fast(tmp_path, levels, key):
    path = tmp_path / "bomb.yaml"
    path.write_text(laughs(levels, key))
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as err:
        config.load_config(path)
    assert time.monotonic() - t0 < 30   # not a timing assert on speed: the old code never returned
    assert_one_short_line(err, "alias", "*l")


def test_yaml_anchor_without_alias_still_loads(tmp_path):
    path = tmp_path / "anchor.yaml"
    path.write_text("run: &r\n  steps: 7\n")
    assert config.load_config(path)["run"]["steps"] == 7


@pytest.mark.parametrize("text, where", [
    ("run:\n  steps: 3\n  steps: 5\n", "line 3"),
    ("run:\n  steps: 3\nrun:\n  seed: 1\n", "line 3"),
    ("aggregator:\n  name: krum\n  f: 1\n  name: average\n", "line 4"),
])
def test_yaml_duplicate_keys_are_refused(tmp_path, text, where):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        config.load_config(path)
    assert_one_short_line(err, "duplicate key", where)


@pytest.mark.parametrize("suffix, body", [(".toml", "[run]\nsteps = 7\n"), (".yaml", "run:\n  steps: 7\n")])
def test_utf8_byte_order_mark_is_accepted(tmp_path, suffix, body):
    path = tmp_path / f"bom{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert config.load_config(path)["run"]["steps"] == 7


def test_config_path_says_what_it_is(tmp_path):
    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)
    (tmp_path / "folder.toml").mkdir()
    link = tmp_path / "link.toml"
    link.symlink_to(fifo)
    for path, words in [(tmp_path / "folder.toml", ["is a directory"]), (fifo, ["FIFO", "not a regular file"]),
                        (link, ["FIFO", "not a regular file"]), ("/dev/zero", ["character device", "not a regular file"]),
                        (tmp_path / "absent.toml", ["not found"])]:
        with pytest.raises(ConfigError) as err:
            config.load_config(path)
        assert_one_short_line(err, *words)
        if "not found" not in words:
            assert "not found" not in str(err.value)


def test_ten_thousand_character_run_name_is_not_echoed_whole(tmp_path):
    path = tmp_path / "long.toml"
    path.write_text('[run]\nname = "' + "x" * 10_000 + '"\n')
    with pytest.raises(ConfigError) as err:
        config.load_config(path)
    assert_one_short_line(err, "run.name", "at most 200 characters")
    assert len(str(err.value)) < 400


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(["run.name", "run.steps", "data.name", "model.hidden", "aggregator.x", "attack.y",
                            "optimizer.lr", "model.kwargs"]),
       value=st.recursive(st.one_of(st.text(max_size=3000), st.integers(), st.floats(), st.booleans()),
                          lambda inner: st.lists(inner, max_size=30) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=5),
                          max_leaves=400))
def test_any_bad_value_gives_one_bounded_line(key, value):
    """Whatever value a key gets, an error about it is one line of bounded length (never a whole repr)."""
    section, name = key.split(".")
    try:
        config.validate({section: {name: value}})
    except ConfigError as exc:
        msg = str(exc)
        assert "\n" not in msg and len(msg) <= MAX_MESSAGE


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(INT_KEYS),
       value=st.one_of(st.integers(min_value=1 << 63), st.integers(max_value=-(1 << 63) - 1)))
def test_integers_beyond_int64_are_refused(key, value):
    section, name = key.split(".")
    with pytest.raises(ConfigError) as err:
        config.validate({section: {name: value}})
    assert key in str(err.value)


@pytest.mark.parametrize("seed, ok", [(-1, False), ((1 << 63) - 1, True), (1 << 63, False), (0, True)])
def test_seed_range(seed, ok):
    if ok:
        assert config.validate({"run": {"seed": seed}})["run"]["seed"] == seed
    else:
        with pytest.raises(ConfigError, match="run.seed"):
            config.validate({"run": {"seed": seed}})


def test_model_hidden_length_is_bounded():
    with pytest.raises(ConfigError, match="model.hidden has 100000 entries"):
        config.validate({"model": {"name": "mlp", "hidden": [1] * 100_000}})


def test_char_transformer_needs_text_data():
    with pytest.raises(ConfigError, match="needs data.name = 'text'"):
        config.validate({"model": {"name": "char-transformer"}, "data": {"name": "synthetic"}})
