"""Measuring a model: patient-level cross-validation (frozen probes and fine-tuning protocols),
paired statistics with bootstrap CIs, calibration reliability, `evaluate`, and the shortcut audit
of a cohort (`audit`: cues that need no learning).

May import the base modules, `data`, `models` and `training`; never `benchmark` or `inference`.
"""
