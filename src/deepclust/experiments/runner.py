"""``deepclust experiment CONFIG``: the one way to run a paper's protocol from a file.

The file's ``method:`` picks the protocol: none (or episodic, classic) is the core paper's
Table 1 (:mod:`.core`), ``mmdc`` or ``imc_swav`` an end-to-end method's
(:mod:`.end_to_end`), ``c2m`` the learned metric's (:mod:`.c2m`). Each loads and checks the
whole file before any work, runs in resumable parts (finished parts are not redone), and
writes its table (markdown), results.csv, results.json and a figure into ``out``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from deepclust.config import END_TO_END, load_yaml
from deepclust.experiments import c2m, core, end_to_end


@dataclass(frozen=True)
class Protocol:
    load: Callable[..., Any]  # (path, **overrides) -> config
    run: Callable[[Any], dict]  # config -> results (with "seconds")
    table: str  # the markdown table it writes into config.out


def protocol_for(method: str | None) -> Protocol:
    if method == "c2m":
        return Protocol(c2m.load_c2m_experiment, c2m.run_c2m_experiment, "table.md")
    if method in END_TO_END:
        return Protocol(end_to_end.load_clustering_experiment, end_to_end.run_clustering_experiment, "table.md")
    return Protocol(core.load_experiment, core.run_experiment, "table1.md")


def run_experiment_file(path: str | os.PathLike, **overrides: Any) -> tuple[Any, dict, str]:
    """Load, check and run the protocol of the file at ``path``; returns (config, results,
    path of its markdown table)."""
    protocol = protocol_for(load_yaml(path).get("method"))
    config = protocol.load(path, **overrides)
    results = protocol.run(config)
    return config, results, os.path.join(config.out, protocol.table)
