"""`wsp-cirrhosis benchmark`: the method x encoder x seed grid (`grid`), running its cells with
resume (`run`), representation monitors per cell, and the reports (tables and text in `report` and
`text`, figures in `plots`, written together by `outputs`).

May import every stage before it (`data`, `phantom`, `models`, `training`, `evaluation`); nothing
imports it except the CLI.
"""
