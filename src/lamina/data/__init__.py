"""Data: sources and their licenses, a policy over them, cleaning, dedup and quality filters,
token shards, and the ledger that traces every training token to its document, source and license."""

from .build import Build, BuildConfig, build_corpus
from .ledger import Ledger
from .loader import TokenShards
from .license_text import identify_license
from .licenses import NOASSERTION, Policy, Verdict, distribution_license, normalize_license
from .recipes import Recipe, data_recipe
from .report import report, trace, why, why_source
from .shards import open_shard, read_manifest
from .sources import RawDocument, Source, builtin, folder_source

__all__ = ["Build", "BuildConfig", "Ledger", "NOASSERTION", "Policy", "RawDocument", "Recipe",
           "Source", "TokenShards", "Verdict", "build_corpus", "builtin", "data_recipe", "distribution_license",
           "folder_source", "identify_license", "normalize_license", "open_shard", "read_manifest", "report",
           "trace", "why", "why_source"]
