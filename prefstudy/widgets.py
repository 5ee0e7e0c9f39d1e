"""Interactive views over runs for notebooks, in plain ipywidgets: one import for all of them.

- `explore(runs)` → `Explorer` (`prefstudy.explorer`): choose objectives, a learning rate (or
  every one, a row each), seeds and a pair or a length bin; see the pair's text, its loss_p /
  loss_n trajectories and where it sits in the gap-versus-length cloud.
- `what_if(records)` → `WhatIf` (`prefstudy.whatif`): for the runs of one setting, β, SimPO's
  margin γ and the normalisation recompute every objective's per-pair loss and margin from the
  logged log-probs, without retraining.
- `run_settings` (`prefstudy.views`): which runs are seeds of one setting; no view pools runs of
  different settings, and each says how many runs a line pools. `study_colours`: the report's.
- `notebook_runs(rerun)` (`prefstudy.study`): the notebooks' one switch, the committed study
  runs or a fresh re-run; `study_labels` (`prefstudy.tables`) reads a study's label order.

Everything here is defined in the modules named; this one only gathers their public names.
"""

from .diagnostics import length_bins
from .explorer import (
    EACH_LR,
    Explorer,
    ExplorerData,
    draw_cloud,
    draw_trajectories,
    explore,
    explorer_data,
    pooling_note,
)
from .recompute import sequence_logps, sums_suffice
from .study import notebook_runs
from .tables import study_labels
from .views import lr_name, run_settings, study_colours
from .whatif import (
    WhatIf,
    draw_what_if,
    objective_params,
    recompute,
    what_if,
    what_if_objectives,
    what_if_summary,
)

__all__ = ["EACH_LR", "Explorer", "ExplorerData", "WhatIf", "draw_cloud", "draw_trajectories",
           "draw_what_if", "explore", "explorer_data", "length_bins", "lr_name", "notebook_runs",
           "objective_params", "pooling_note", "recompute", "run_settings", "sequence_logps",
           "study_colours", "study_labels", "sums_suffice", "what_if", "what_if_objectives",
           "what_if_summary"]
