"""Synthetic phantom cohorts (`wsp-cirrhosis synth`): the anatomy (body, liver, vessels), the shapes
of the signs and decoys, and the cohort plan with its manifests. A phantom is a test instrument,
not a dataset: its results say what the method can learn from a signal that was put there.

May import the base modules and `data` (to write images and manifests the way users' cohorts are read).
"""
