"""Synthesised dialogues for the four situations of Full-Duplex-Bench v1, seeded.

Each scenario is a `Script` of espeak-ng speech (a voice and a speaking rate drawn from the seed)
plus the ground truth the metrics need (`Truth`), measured on the rendered audio:

- pause: one user turn of more than 5 s with 2-3 mid-sentence SSML `<break>`s of 0.4-1.0 s, then
  a real turn end and silence (only the output before that turn end is judged);
- turn_taking: a question (one or two sentences), then silence: the model should answer;
- interruption: a question, silence long enough for the model to start (it needs ~0.6 s of
  silence plus up to a tick), then the user cuts in while it speaks, then silence for its answer;
- backchannel: a question, silence while the model starts, then "mm-hm"/"yeah"/"right" while it
  speaks (it should keep going), then silence.

The sentences are this benchmark's own (not the demo's, and never produced by the turn
detector's training grammar), and the voices are the detector's held-out test voices
(`cluster.training.turn_corpus.TEST_VOICES`): nothing here was heard in training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from cluster.bench.duplex.metrics import KINDS, Kind, Truth
from cluster.conversation import Say, Script, Silence, Track
from cluster.training.turn_corpus import TEST_VOICES

VOICES = TEST_VOICES
RATES_WPM = tuple(range(140, 201, 10))
PAUSE_S = (0.4, 1.0)
LEAD_S = 0.5
MIN_PAUSE_TURN_S = 5.0

# "|" marks where a mid-sentence pause goes.
PAUSE_TURNS = (
    "When we finally reached the old harbour | the fishing boats were already coming back, | "
    "and the whole pier smelled of salt and diesel.",
    "My neighbour has been building a wooden canoe in his garage | for almost three years now, | "
    "and he still has not decided | what colour to paint it.",
    "The recipe says to let the dough rest overnight, | but I usually get impatient after an hour | "
    "and bake it anyway, which is probably why it never rises properly.",
    "Before the meeting starts tomorrow | I need to print the quarterly figures, | book a room on the "
    "third floor | and remind everyone to bring their laptops.",
    "The library downtown is closing for renovation next month, | so I borrowed a stack of novels | "
    "that should keep me busy until the autumn.",
    "Last winter the pipes in our basement froze | during the coldest week of the year, | and the "
    "plumber could not come until the following Tuesday.",
    "I have been trying to learn the piano in the evenings, | but my fingers keep tripping over the "
    "same three bars | no matter how slowly I play them.",
    "The train from the mountains was delayed by a fallen tree, | so we spent two hours in a tiny "
    "station cafe | drinking terrible coffee and playing cards.",
)
QUESTIONS = (
    "I just got back from a week of hiking in the hills. What should I cook for dinner tonight?",
    "My phone battery dies before lunch every day. Do you think I need a new one?",
    "We are thinking about adopting a dog from the shelter. Which breeds are good with small children?",
    "I finished that long novel about the lighthouse keeper. Can you suggest something lighter?",
    "The printer in our office keeps jamming on every second page. How do I fix it?",
    "Our garden is full of tomatoes this year. What can I do with all of them?",
    "I started volunteering at the city museum last month. What does a curator actually do all day?",
    "My grandfather kept bees for forty years. How do bees find their way back to the hive?",
)
INTERRUPTIONS = (
    "Hold on, what about the moon?",
    "Sorry, wait, which one is the cheapest?",
    "Actually, can we talk about something else?",
    "Wait, how long does that take?",
    "Hang on, is that really true?",
    "Stop, I have a better idea.",
)
BACKCHANNELS = ("Mm-hm.", "Yeah.", "Right.", "Uh-huh.", "Okay.")
# Seconds of silence after the context turn before the cue: the model starts ~0.8-1.0 s after a
# turn end (0.6 s threshold + VAD + up to a tick), so the cue lands while it speaks.
CUE_GAP_S = {"interruption": (1.9, 2.6), "backchannel": (1.7, 2.4)}
ANSWER_S = {"pause": 2.0, "turn_taking": 3.0, "interruption": 3.0, "backchannel": 3.0}


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: Kind
    voice: str
    rate_wpm: int
    script: Script
    pause_breaks_s: tuple[float, ...] = ()  # the scripted break lengths (pause scenarios)


@dataclass
class RenderedScenario:
    scenario: Scenario
    track: Track
    truth: Truth


def make_scenarios(n: int, seed: int = 0, voices: tuple[str, ...] = VOICES) -> list[Scenario]:
    """`n` scenarios, the four kinds in turn (so any n >= 4 covers all), everything else drawn
    from `seed`: the same seed gives the same scenarios."""
    if n < 1:
        raise ValueError(f"--scenarios must be at least 1 (got {n})")
    rng = random.Random(seed)
    voice_order = list(voices)
    rng.shuffle(voice_order)
    banks = {name: _shuffled(rng, bank) for name, bank in (
        ("pause", PAUSE_TURNS), ("question", QUESTIONS), ("interruption", INTERRUPTIONS),
        ("backchannel", BACKCHANNELS))}
    out = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        voice = voice_order[(i + i // len(voice_order)) % len(voice_order)]  # shifts each round: kinds meet all voices
        rate = rng.choice(RATES_WPM)
        say = lambda text, **kw: Say(text, voice=voice, rate_wpm=rate, **kw)  # noqa: E731
        breaks: tuple[float, ...] = ()
        question = banks["question"][(i - i // len(KINDS) - 1) % len(QUESTIONS)]  # i-th non-pause scenario
        if kind == "pause":
            template = _pick(banks["pause"], i)
            breaks = tuple(round(rng.uniform(*PAUSE_S), 2) for _ in range(template.count("|")))
            segments = [Silence(LEAD_S), say(_with_breaks(template, breaks)), Silence(ANSWER_S[kind])]
        elif kind == "turn_taking":
            segments = [Silence(LEAD_S), say(question), Silence(ANSWER_S[kind])]
        else:
            gap = round(rng.uniform(*CUE_GAP_S[kind]), 2)
            cue = (say(_pick(banks["interruption"], i), barge_in=True) if kind == "interruption"
                   else say(_pick(banks["backchannel"], i), ends_turn=False))
            segments = [Silence(LEAD_S), say(question), Silence(gap), cue,
                        Silence(ANSWER_S[kind])]
        out.append(Scenario(f"{i:02d}-{kind}-{voice}-{rate}", kind, voice, rate, Script(segments), breaks))
    return out


def render(scenario: Scenario) -> RenderedScenario:
    """Synthesise the user's side and read the ground truth off the audio."""
    track = scenario.script.render()
    return RenderedScenario(scenario, track, truth_of(scenario.kind, track))


def truth_of(kind: Kind, track: Track) -> Truth:
    timeline = track.timeline
    assert timeline is not None, "a rendered script carries its timeline"
    rate = float(timeline.sample_rate)
    spans = timeline.speech
    first = spans[0]
    cue = spans[1] if len(spans) > 1 else None
    return Truth(
        kind=kind,
        floor_start_s=first.start / rate,
        turn_end_s=first.end / rate,
        pauses=tuple((a / rate, b / rate) for a, b in first.pauses) if kind == "pause" else (),
        cue_start_s=cue.start / rate if cue else None,
        cue_end_s=cue.end / rate if cue else None,
    )


def _with_breaks(template: str, breaks: tuple[float, ...]) -> str:
    parts = [p.strip() for p in template.split("|")]
    text = parts[0]
    for pause, part in zip(breaks, parts[1:], strict=True):
        text += f' <break time="{round(pause * 1000)}ms"/> {part}'
    return f"<speak>{text}</speak>"


def _shuffled(rng: random.Random, bank: tuple[str, ...]) -> list[str]:
    items = list(bank)
    rng.shuffle(items)
    return items


def _pick(bank: list[str], i: int) -> str:
    """The bank's next item for the (i // 4)-th scenario of a kind."""
    return bank[(i // len(KINDS)) % len(bank)]
