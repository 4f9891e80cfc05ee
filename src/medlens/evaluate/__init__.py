"""Evaluation on held-out data. Validation fits, test only measures.

Where each rule lives: :mod:`.figures` (the one table of classification figures: names, how each
is computed, CLI columns), :mod:`.intervals` (bootstrap and exact intervals, ``fmt_ci``),
:mod:`.metrics` (point figures and terminal tables), :mod:`.segmentation` (the one Dice/IoU),
:mod:`.heads` (extra heads), :mod:`.calibration`, :mod:`.policy` (decision thresholds and the
borderline rule), :mod:`.worklists`, :mod:`.caveats` (warnings shown first), :mod:`.heldout`
(validation → test), :mod:`.report` and :mod:`.plots` (the HTML report).
"""
