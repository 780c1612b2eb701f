"""The run state of an output folder (commit records, summary, lease, identity): one owner, no Ray."""

from .identity import IdentityChanged, library_versions
from .lease import LeaseHeld, LeaseLost
from .records import DONE, FAILED, ShardRecord, Status, error_text, reason_and_detail
from .retry import StoreWriteFailed
from .state import OutputError, RunState, RunView, read_run
from .summary import MANIFEST, Totals

__all__ = ["DONE", "FAILED", "IdentityChanged", "LeaseHeld", "LeaseLost", "MANIFEST", "OutputError", "RunState",
           "RunView", "ShardRecord", "Status", "StoreWriteFailed", "Totals", "error_text", "library_versions", "read_run",
           "reason_and_detail"]
