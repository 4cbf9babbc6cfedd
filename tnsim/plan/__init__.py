"""The planner and executor: contraction paths (cotengra, cached in memory and on disk,
:mod:`._paths`), their execution with torch (:mod:`._execute`), and the loop that plans and
runs one doubled network per orbit (:mod:`._contract`)."""

from ._contract import Contraction, Scaled, contract_pairings, dry_run, normalised, planned, quiet
from ._execute import count_flops, execute, shared_intermediates
from ._paths import cache_dir, clear_cache, find_tree

__all__ = ["Contraction", "Scaled", "contract_pairings", "dry_run", "normalised", "planned",
           "quiet", "count_flops", "execute", "shared_intermediates", "cache_dir", "clear_cache",
           "find_tree"]
