"""A scripted user side of a conversation, for the demo, `microturn talk` and benchmarks.

- `script`: what the user says and when (`Script` of `Say`, `Silence`, `RequestTool`),
  rendered to a 16 kHz track with its ground truth (`Timeline`);
- `recording`: `stream_script` streams a track at real-time pace and records the answer
  (`ConversationRecording`: output.wav, events.jsonl);
- `metrics`: `measure` - turn-taking latency, interruption stop latency, pause takeovers,
  ticks, late chunks, tool results, turn events, each latency with where its time went.

    track = Script([Say("Hello there."), Silence(2.0)]).render()
    async with InteractionClient(address) as client, client.session() as session:
        recording = await stream_script(session, track, tail_s=2.0)
    recording.write_wav(out / "output.wav")
    recording.write_events(out / "events.jsonl")
    print(measure(recording, track.timeline))
"""

from cluster.conversation.metrics import measure
from cluster.conversation.recording import ConversationRecording, ReceivedAudio, stream_script
from cluster.conversation.script import (
    RequestTool,
    Say,
    Script,
    Silence,
    SpeechSpan,
    Timeline,
    Track,
    UnsupportedAudio,
)

__all__ = ["ConversationRecording", "ReceivedAudio", "RequestTool", "Say", "Script", "Silence",
           "SpeechSpan", "Timeline", "Track", "UnsupportedAudio", "measure", "stream_script"]
