"""Layer 1, reading scans: DICOM headers and pixels (``headers``, ``dicom``), NIfTI and
DICOM volumes (``io``, ``scan.ScanVolume``), finding scans and series in folders
(``discover``), label-map sidecars (``labels_sidecar``) and the model's input geometry
(``preprocess``: ``PreprocessSpec``, resampling to the network grid and back with
``to_scan_grid``).

May import: ``client.core``.
"""
