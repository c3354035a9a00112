"""ResultRow and the tidy frame."""

import math

import torch

from geoprobe.results import FRAME_COLUMNS, ResultRow, rows_to_frame


def test_rows_to_frame_tidy_columns():
    rows = [
        ResultRow("p", "s", torch.tensor(0.5), layer=1, head=2, ci_low=0.1, ci_high=0.9, variant="v", meta={"n": 3}),
        ResultRow("p", "s", 1.0),
    ]
    assert isinstance(rows[0].value, float)
    df = rows_to_frame(rows)
    assert list(df.columns) == FRAME_COLUMNS
    assert df.loc[0, "layer"] == 1 and df["layer"].isna().iloc[1]
    assert df.loc[1, "variant"] == "default"
    assert math.isnan(df.loc[1, "ci_low"])
    assert rows_to_frame(rows, include_meta=True).loc[0, "meta"] == {"n": 3}
    assert list(rows_to_frame([]).columns) == FRAME_COLUMNS


def test_typed_frame_is_the_row_dtypes_of_every_result_frame():
    """One dtype rule for result frames: the probe rows, the scan's SULA rows and its causal rows."""
    import pandas as pd

    from geoprobe.results import ResultRow, rows_to_frame, typed_frame
    from geoprobe.scan.driver import sula_rows

    df = typed_frame(pd.DataFrame.from_records([{"layer": None, "head": 2, "position": None, "value": 1,
                                                 "ci_low": None, "ci_high": 3}]))
    assert [str(df[c].dtype) for c in ("layer", "head", "position", "value", "ci_low", "ci_high")] == \
        ["Int64", "Int64", "Int64", "float64", "float64", "float64"]
    assert df["layer"].isna().all() and int(df["head"][0]) == 2 and math.isnan(df["ci_low"][0])
    probe = rows_to_frame([ResultRow("p", "s", 1.0, layer=None, head=1)])
    sula = sula_rows({"by_condition_k": [{"k": 0, "condition": "main", "n": 3, "mae_bits": 0.1, "h_model_bits": 1.0,
                                          "h_bayes_bits": 0.9, "discarded_mass": 0.0}]})
    for frame in (probe, sula):
        assert [str(frame[c].dtype) for c in ("layer", "head", "position", "value", "ci_low", "ci_high")] == \
            ["Int64", "Int64", "Int64", "float64", "float64", "float64"]
