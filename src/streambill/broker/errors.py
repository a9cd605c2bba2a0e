"""Errors of the broker package, under the project's root error type."""

from __future__ import annotations

from streambill.errors import StreambillError


class BrokerError(StreambillError):
    """The embedded broker or one of its helper processes failed."""

    code = "broker_error"


class ProcessStartError(BrokerError):
    """A child process did not start or did not become ready in time."""

    code = "process_start_failed"


class PortInUse(ProcessStartError):
    """A port we were told to listen on is taken (maybe by another stack)."""

    code = "port_in_use"


class DataDirLocked(BrokerError):
    """Another process already uses this data directory."""

    code = "data_dir_locked"


class TopicMismatch(BrokerError):
    """An existing topic differs from its spec (partition count), or could not be created."""

    code = "topic_mismatch"
