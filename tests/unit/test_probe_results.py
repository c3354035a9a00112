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
