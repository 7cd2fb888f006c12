"""The wire protocol: stubs are fresh, messages round-trip, services are what clients expect."""

import filecmp

from protos.generate import ROOT, generate, proto_files
from protos.microturn.v1 import eventbus_pb2, events_pb2, interaction_pb2


def test_committed_stubs_match_the_protos(tmp_path):
    generate(tmp_path)
    generated = sorted((tmp_path / "protos" / "microturn" / "v1").glob("*_pb2*.py*"))
    assert len(generated) == 3 * len(proto_files())
    stale = [p.name for p in generated
             if not filecmp.cmp(p, ROOT / "protos" / "microturn" / "v1" / p.name, shallow=False)]
    assert not stale, f"stubs are stale, run `make protos`: {stale}"


def test_client_message_round_trip_keeps_the_oneof():
    msg = interaction_pb2.ClientMessage(audio=interaction_pb2.AudioChunk(seq=7, pcm16=b"\x01\x00" * 3200))
    back = interaction_pb2.ClientMessage.FromString(msg.SerializeToString())
    assert back.WhichOneof("payload") == "audio"
    assert back.audio.seq == 7 and len(back.audio.pcm16) == 6400


def test_server_messages_carry_bus_payloads():
    result = events_pb2.ToolResult(job_id="j1", tool="web_search", result_json="{}")
    msg = interaction_pb2.ServerMessage(seq=3, tick=10, tool_result=result)
    assert interaction_pb2.ServerMessage.FromString(msg.SerializeToString()).tool_result == result


def test_services_and_methods():
    interaction = interaction_pb2.DESCRIPTOR.services_by_name["Interaction"]
    converse = interaction.methods_by_name["Converse"]
    assert converse.client_streaming and converse.server_streaming
    bus = eventbus_pb2.DESCRIPTOR.services_by_name["EventBus"]
    assert set(bus.methods_by_name) == {"Publish", "Subscribe"}
    assert bus.methods_by_name["Subscribe"].server_streaming
    assert not bus.methods_by_name["Publish"].server_streaming
    assert bus.full_name == "microturn.v1.EventBus"
