"""What `bench load`'s clients measure: raw samples (ms), merged across client processes before
any percentile is taken, so that the report's p99 is the p99 of every chunk, not an average of
each process's p99."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from foreground.engine.percentiles import percentile

CHUNK_S = 0.2  # one tick: a chunk that waited longer for its tick is late
HOPS = ("client_to_bridge", "bridge_to_replica", "replica_to_bridge", "bridge_to_client")  # `<hop>_ms` samples


@dataclass
class LoadTally:
    overhead_ms: list[float] = field(default_factory=list)
    inbound_ms: list[float] = field(default_factory=list)  # client send -> replica receipt (less the bridge's wait)
    outbound_ms: list[float] = field(default_factory=list)  # tick end -> client receipt
    round_trip_ms: list[float] = field(default_factory=list)
    bridge_wait_ms: list[float] = field(default_factory=list)  # realtime: append at the bridge -> its pacer sent it
    # realtime, each hop apart: client -> bridge, bridge -> replica, replica -> bridge, bridge -> client
    client_to_bridge_ms: list[float] = field(default_factory=list)
    bridge_to_replica_ms: list[float] = field(default_factory=list)
    replica_to_bridge_ms: list[float] = field(default_factory=list)
    bridge_to_client_ms: list[float] = field(default_factory=list)
    audio_chunks: int = 0  # ticks told to the client (AudioOut; realtime: audio deltas and microturn.tick)
    audio_deltas: int = 0  # realtime: `response.output_audio.delta` events among them
    chunks_sent: int = 0
    late_chunks: int = 0  # waited more than one tick for their tick, or never used
    errors: list[str] = field(default_factory=list)
    woven_ms: list[float] = field(default_factory=list)  # background result published -> woven
    bus_ms: list[float] = field(default_factory=list)  # ... published -> read by the replica
    results_published: int = 0

    def add_chunk(self, sent_ns: int, received_ns: int, chunk_received_ns: int, tick_started_ns: int,
                  tick_ended_ns: int, bridge_wait_ns: int | None = None) -> None:
        """One tick's output that used a chunk this client sent (all wall-clock ns, one machine):
        overhead = (received - sent) - (tick ended - replica received) - the bridge's wait."""
        total = received_ns - sent_ns
        model = tick_ended_ns - chunk_received_ns
        wait = bridge_wait_ns or 0
        self.round_trip_ms.append(total / 1e6)
        self.overhead_ms.append((total - model - wait) / 1e6)
        self.inbound_ms.append((chunk_received_ns - sent_ns - wait) / 1e6)
        self.outbound_ms.append((received_ns - tick_ended_ns) / 1e6)
        if bridge_wait_ns is not None:
            self.bridge_wait_ms.append(bridge_wait_ns / 1e6)
        if tick_started_ns - chunk_received_ns > CHUNK_S * 1e9:
            self.late_chunks += 1

    def add_hops(self, sent_ns: int, append_received_ns: int, chunk_sent_ns: int, chunk_received_ns: int,
                 tick_ended_ns: int, bridge_received_ns: int, received_ns: int) -> None:
        """Realtime: where the overhead goes, hop by hop (the bridge's own stamps)."""
        self.client_to_bridge_ms.append((append_received_ns - sent_ns) / 1e6)
        self.bridge_to_replica_ms.append((chunk_received_ns - chunk_sent_ns) / 1e6)
        self.replica_to_bridge_ms.append((bridge_received_ns - tick_ended_ns) / 1e6)
        self.bridge_to_client_ms.append((received_ns - bridge_received_ns) / 1e6)

    def add_woven(self, published_ns: int, received_ns: int, woven_ns: int) -> None:
        self.woven_ms.append((woven_ns - published_ns) / 1e6)
        self.bus_ms.append((received_ns - published_ns) / 1e6)

    def absorb(self, other: LoadTally) -> None:
        """Add another client process's samples and counts to this one."""
        for f in fields(self):
            mine = getattr(self, f.name)
            if isinstance(mine, list):
                mine.extend(getattr(other, f.name))
            else:
                setattr(self, f.name, mine + getattr(other, f.name))

    def _hop_percentiles(self) -> dict:
        """`<hop>_ms_p50/p99` for each realtime hop measured (none for gRPC clients)."""
        out = {}
        for hop in HOPS:
            samples = getattr(self, f"{hop}_ms")
            if samples:
                out[f"{hop}_ms_p50"] = rounded_percentile(samples, 50, 2)
                out[f"{hop}_ms_p99"] = rounded_percentile(samples, 99, 2)
        return out

    def report(self) -> dict:
        """The JSON keys `bench load` has always printed, from the merged samples."""
        return {
            "chunks_measured": len(self.overhead_ms),
            "chunk_overhead_ms_p50": rounded_percentile(self.overhead_ms, 50, 3),
            "chunk_overhead_ms_p99": rounded_percentile(self.overhead_ms, 99, 3),
            "inbound_ms_p50": rounded_percentile(self.inbound_ms, 50, 3),
            "inbound_ms_p99": rounded_percentile(self.inbound_ms, 99, 3),
            "outbound_ms_p50": rounded_percentile(self.outbound_ms, 50, 3),
            "outbound_ms_p99": rounded_percentile(self.outbound_ms, 99, 3),
            "round_trip_ms_p50": rounded_percentile(self.round_trip_ms, 50, 2),
            "round_trip_ms_p99": rounded_percentile(self.round_trip_ms, 99, 2),
            "bridge_wait_ms_p50": rounded_percentile(self.bridge_wait_ms, 50, 2),
            "bridge_wait_ms_p99": rounded_percentile(self.bridge_wait_ms, 99, 2),
            **self._hop_percentiles(),
            "chunks_sent": self.chunks_sent,
            "late_chunks": self.late_chunks,
            "bg_results_published": self.results_published,
            "bg_results_woven": len(self.woven_ms),
            "bg_result_to_tick_ms_p50": rounded_percentile(self.woven_ms, 50, 2),
            "bg_result_to_tick_ms_p99": rounded_percentile(self.woven_ms, 99, 2),
            "bg_result_bus_ms_p99": rounded_percentile(self.bus_ms, 99, 2),
            "errors": len(self.errors),
            "error_samples": self.errors[:5],
        }


def rounded_percentile(values: list[float], q: float, digits: int) -> float | None:
    """A percentile rounded for a report; None (JSON null) when there are no samples."""
    value = percentile(values, q)
    return None if math.isnan(value) else round(value, digits)
