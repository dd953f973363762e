"""The relevance workbench: configurations side by side (``splade-es compare``) and the page
at ``/_splade/ui`` in ``splade-es serve`` (``ui``), with token contributions and judgments.

    configurations   ``bm25``, ``splade``, ``hybrid:rrf``, ``splade,index=docs-v2`` ...
    columns          one configuration's hits for one query, with their contributions
    compare          rank changes, measures, wins/ties/losses against the first one
    runner           columns from a synchronous client (the command)
    judgments        the qrels file the page writes (BEIR layout) and ``evaluate`` reads
    ui               serve's page and its JSON endpoints
"""

from .columns import Column, ColumnHit, QueryToken
from .compare import Comparison, QueryComparison, Record, compare, rank_changes
from .configurations import Configuration, parse_configuration, parse_configurations

__all__ = [
    "Column",
    "ColumnHit",
    "Comparison",
    "Configuration",
    "QueryComparison",
    "QueryToken",
    "Record",
    "compare",
    "parse_configuration",
    "parse_configurations",
    "rank_changes",
]
