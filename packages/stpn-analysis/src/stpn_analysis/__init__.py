"""Energy and proficiency tables and figures from STPN runs (docs/run-format.md).

``stpn_analysis`` only reads what the task packages write (``metrics.json``, CSV logs,
checkpoints); it never imports them, so a runs folder can be analysed anywhere.

    runs = load_runs("runs/ar")
    print(format_table(summarise(runs)))
    write_report("runs/ar")          # summary.csv, summary.md, figures/*.png
"""

from stpn_analysis.familiarity import (
    format_generalisation,
    generalisation_frame,
    plot_generalisation_accuracy,
    plot_generalisation_rates,
    summarise_generalisation,
)
from stpn_analysis.plots import (
    model_colour,
    plot_energy_profile,
    plot_plasticity,
    plot_proficiency_energy,
    plot_reward_curves,
    plot_validation_accuracy,
    save_figure,
)
from stpn_analysis.report import write_report
from stpn_analysis.runs import Run, load_plasticity, load_runs
from stpn_analysis.tables import format_table, summarise

__version__ = "0.1.0"

__all__ = [
    "Run",
    "format_generalisation",
    "format_table",
    "generalisation_frame",
    "load_plasticity",
    "load_runs",
    "model_colour",
    "plot_energy_profile",
    "plot_generalisation_accuracy",
    "plot_generalisation_rates",
    "plot_plasticity",
    "plot_proficiency_energy",
    "plot_reward_curves",
    "plot_validation_accuracy",
    "save_figure",
    "summarise",
    "summarise_generalisation",
    "write_report",
]
