"""The client side of hivemind's state download, for a process that is no averager (the coordinator's pull).

Replaces (hivemind 1.1.12): the class name ``DecentralizedAverager`` registers its RPC handlers under, and the
handler and stub caches (``_rpc_handlers``, ``_stub_type``)."""

from __future__ import annotations

from hivemind.averaging import DecentralizedAverager


class StateDownloadClient(DecentralizedAverager):
    """Client side of hivemind.Optimizer's state download. hivemind names RPC handlers after the servicer's class
    (``<prefix>::TrainingStateAverager.rpc_download_state``), so the client must carry that class name; its own
    handler cache keeps it from reusing a parent's stub built under another name."""

    _rpc_handlers = None
    _stub_type = None


StateDownloadClient.__name__ = "TrainingStateAverager"
