"""Data kinds and the split: the registry is what [data] kind may name, and the split is
stratified, disjoint, complete and a function of the seed alone."""

from __future__ import annotations

import pytest

from sweeper.data import LOADERS, load_raw
from sweeper.errors import UserError
from sweeper.spec import load_spec
from tests.conftest import write_spec


def test_an_unknown_data_kind_is_refused_with_the_registry_s_names(tmp_path):
    spec = load_spec(write_spec(tmp_path, data={"kind": "parquet"}))
    with pytest.raises(UserError) as caught:
        load_raw(spec)
    message = str(caught.value)
    assert "tiny.toml: [data] kind is 'parquet'" in message
    for kind in LOADERS:  # every registered kind is offered, and nothing else
        assert kind in message
