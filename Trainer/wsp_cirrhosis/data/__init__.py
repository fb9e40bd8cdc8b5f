"""Stage 1, CT -> liver slices: reading images (files, DICOM series), orientation, the liver-slice
stack (`slices.prepare_ct`), cohort manifests and folder scans, the slice cache and its worker pool,
and automatic liver masks.

May import only the package's base modules (`errors`, `files`, `progress`, `provenance`, `config`);
never a later stage.
"""
