"""Fuzzing the config parser: whatever comes in, the result is a valid config or a one-line ConfigError."""
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from krum_mpi import config
from krum_mpi.errors import ConfigError

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.lists(st.integers(-5, 50), max_size=4))
known_keys = [(sec, key) for sec, body in config.DEFAULTS.items() for key in body]
key_names = st.one_of(st.sampled_from([k for _, k in known_keys]), st.text(string.ascii_lowercase + "_.", max_size=10))
sections = st.one_of(st.sampled_from(list(config.DEFAULTS)), st.text(string.ascii_lowercase, max_size=8))
raw_configs = st.dictionaries(sections, st.one_of(st.dictionaries(key_names, scalars, max_size=5), scalars),
                              max_size=4)


def _accepts_or_explains(raw):
    try:
        cfg = config.validate(raw)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)
        return None
    assert set(cfg) == set(config.DEFAULTS)
    return cfg


@settings(max_examples=300, deadline=None)
@given(raw_configs)
def test_validate_never_crashes(raw):
    _accepts_or_explains(raw)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(string.printable, max_size=30), max_size=4))
def test_overrides_never_crash(items):
    try:
        raw = config.apply_overrides({}, items)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    _accepts_or_explains(raw)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_toml_text_never_crashes(text):
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.toml"
        path.write_text(text, encoding="utf-8")
        _load_or_explain(path)


def _load_or_explain(path):
    try:
        config.load_config(path)
    except ConfigError as exc:
        assert "\n" not in str(exc)
