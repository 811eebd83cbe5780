"""Per-model calibration: the small artifacts Kascade and TidalDecode load (file formats in `artifacts`) and the
`lychee-bench calibrate` pass that writes them (dense statistics in `collect`, the choices in `kascade` and
`tidal`)."""
