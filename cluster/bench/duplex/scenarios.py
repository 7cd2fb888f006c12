"""Synthesised dialogues for the four situations of Full-Duplex-Bench v1, seeded.

Each scenario is a `Script` of synthesised speech (a voice and a speaking rate drawn from the
seed) plus the ground truth the metrics need (`Truth`), measured on the clean rendered audio:

- pause: one user turn of more than 5 s with 2-3 mid-sentence SSML `<break>`s of 0.4-1.0 s, then
  a real turn end and silence (only the output before that turn end is judged);
- turn_taking, twice per round: a context sentence and a question, or a context sentence and a
  statement (`Truth.ending`), then silence: the model should answer either;
- interruption: a question, silence long enough for the model to start (it needs ~0.6 s of
  silence plus up to a tick), then the user cuts in while it speaks, then silence for its answer;
- backchannel: a question, silence while the model starts, then "yeah"/"right"/"uh-huh" while it
  speaks (it should keep going), then silence.

Nothing here was heard in training. The sentences are this benchmark's own: not the demo's,
never produced by the turn detector's training grammar (the pause turns lengthen its held-out
test sentences; the statements and the babble are used nowhere else). The voices are the
detector's test voices (`turn_corpus.TEST_VOICES`): espeak-ng accents held out of training, and
festival (HTS `cmu_us_slt_arctic_hts`, diphone `kal_diphone`), a synthesiser training never used
(`cluster.synthesizers`: it turns each `<break>` into a stretched comma gap).

`--noise` mixes a background (`cluster.backgrounds`) into the whole user track, silences
included, at `--snr-db` below the speech's RMS over its voiced spans, after the truth was read
off the clean audio. Babble is the bench's own sentences spoken by the other test voices.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass

import numpy as np

from cluster.backgrounds import BENCH_KINDS, background, mix_at_snr
from cluster.bench.duplex.metrics import Ending, Kind, Truth
from cluster.conversation import Say, Script, Silence, Track
from cluster.speech import synthesize
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
STATEMENTS = (
    "I spent the whole morning repainting the fence behind the house. It looks much better than it did last year.",
    "My sister moved to a small town near the border last spring. She says the winters there are longer than "
    "she expected.",
    "We finally replaced the old boiler in the cellar. The house has been warm all week for the first time.",
    "The bakery across from the station started opening at six. I have been buying my breakfast there every day.",
    "Our team lost the match on Saturday by a single goal. The coach wants us to train twice a week from now on.",
    "I found my grandmother's recipe book in a box in the attic. Half of the pages are written in pencil.",
    "The bus company changed the timetable again this month. Now the last bus leaves twenty minutes earlier.",
    "My son built a bird feeder out of an old milk carton. Three kinds of birds have visited it already.",
)
INTERRUPTIONS = (
    "Hold on, what about the moon?",
    "Sorry, wait, which one is the cheapest?",
    "Actually, can we talk about something else?",
    "Wait, how long does that take?",
    "Hang on, is that really true?",
    "Stop, I have a better idea.",
)
# Short acknowledgements (0.25-0.65 s voiced on the test voices at 140-200 wpm), within the
# "<= ~0.6 s" an engine may treat as a backchannel; "Mm-hm." is left out: 0.6-1.1 s on these voices.
BACKCHANNELS = ("Yeah.", "Right.", "Uh-huh.", "Okay.", "Sure.")
# Seconds of silence after the context turn before the cue: the model starts ~0.8-1.0 s after a
# turn end (0.6 s threshold + VAD + up to a tick), so the cue lands while it speaks.
# One round of kinds (turn-taking twice: a question, then a statement), so 40 scenarios give 8 each.
ROUND: tuple[tuple[Kind, Ending | None], ...] = (
    ("pause", None), ("turn_taking", "question"), ("interruption", None), ("turn_taking", "statement"),
    ("backchannel", None))
NOISES = BENCH_KINDS
# Babble: other people talking, in sentences used nowhere else, by the other test voices.
BABBLE_SENTENCES = (
    "The weather forecast says it will clear up by the afternoon.",
    "She left her umbrella on the tram and had to walk home in the rain.",
    "They are opening a new swimming pool next to the primary school.",
    "He keeps a list of every film he has watched since nineteen ninety.",
    "The market sells fresh fish on Fridays and flowers on Sundays.",
    "We need to buy more paint before we can finish the hallway.",
    "Their flight was cancelled, so they took the night train instead.",
    "The old clock in the square has not moved for years.",
)
BABBLE_RATE_WPM = 170
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
    ending: Ending | None = None  # turn_taking: the turn ends in a question or a statement
    index: int = 0  # its place in the run (seeds its background)


@dataclass
class RenderedScenario:
    scenario: Scenario
    track: Track
    truth: Truth


def make_scenarios(n: int, seed: int = 0, voices: tuple[str, ...] = VOICES) -> list[Scenario]:
    """`n` scenarios, the kinds of `ROUND` in turn (so any n >= 5 covers all), everything else
    drawn from `seed`: the same seed gives the same scenarios."""
    if n < 1:
        raise ValueError(f"--scenarios must be at least 1 (got {n})")
    rng = random.Random(seed)
    voice_order = list(voices)
    rng.shuffle(voice_order)
    banks = {name: _shuffled(rng, bank) for name, bank in (
        ("pause", PAUSE_TURNS), ("question", QUESTIONS), ("statement", STATEMENTS),
        ("interruption", INTERRUPTIONS), ("backchannel", BACKCHANNELS))}
    used = dict.fromkeys(banks, 0)

    def take(bank: str) -> str:  # each bank's next item, in its shuffled order
        used[bank] += 1
        return banks[bank][(used[bank] - 1) % len(banks[bank])]

    out = []
    for i in range(n):
        kind, ending = ROUND[i % len(ROUND)]
        voice = voice_order[(i // len(ROUND) + i % len(ROUND)) % len(voice_order)]  # each kind meets all voices
        rate = rng.choice(RATES_WPM)
        say = lambda text, **kw: Say(text, voice=voice, rate_wpm=rate, **kw)  # noqa: E731
        breaks: tuple[float, ...] = ()
        if kind == "pause":
            template = take("pause")
            breaks = tuple(round(rng.uniform(*PAUSE_S), 2) for _ in range(template.count("|")))
            segments = [Silence(LEAD_S), say(_with_breaks(template, breaks)), Silence(ANSWER_S[kind])]
        elif kind == "turn_taking":
            segments = [Silence(LEAD_S), say(take(ending or "question")), Silence(ANSWER_S[kind])]
        else:
            context = take("question")
            gap = round(rng.uniform(*CUE_GAP_S[kind]), 2)
            cue = (say(take("interruption"), barge_in=True) if kind == "interruption"
                   else say(take("backchannel"), ends_turn=False))
            segments = [Silence(LEAD_S), say(context), Silence(gap), cue, Silence(ANSWER_S[kind])]
        label = f"{kind}-{ending}" if ending else kind
        out.append(Scenario(f"{i:02d}-{label}-{_slug(voice)}-{rate}", kind, voice, rate, Script(segments), breaks,
                            ending, i))
    return out


def render(scenario: Scenario, noise: str = "none", snr_db: float = 20.0, seed: int = 0) -> RenderedScenario:
    """Synthesise the user's side, read the ground truth off the clean audio, then add the
    background (seeded by `seed` and the scenario's index: the same run gives the same track)."""
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {', '.join(NOISES)} (got {noise!r})")
    track = scenario.script.render()
    truth = truth_of(scenario.kind, track, scenario.ending)
    if noise != "none":
        rng = np.random.default_rng([seed, scenario.index])
        clips = babble_clips(scenario.voice, track.sample_rate) if noise == "babble" else None
        track = with_background(track, noise, snr_db, rng, clips)
    return RenderedScenario(scenario, track, truth)


def truth_of(kind: Kind, track: Track, ending: Ending | None = None) -> Truth:
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
        ending=ending,
    )


def with_background(track: Track, kind: str, snr_db: float, rng: np.random.Generator,
                    babble: list[np.ndarray] | None = None) -> Track:
    """The track with `kind` of background over all of it, `snr_db` below the speech's RMS over
    its voiced samples (pauses and silences excluded), clipped to int16; the timeline is kept."""
    speech = track.pcm16.astype(np.float32) / 32768.0
    noise = background(kind, len(speech), track.sample_rate, rng, babble)
    mixed = mix_at_snr(speech, noise, snr_db, voiced_mask(track))
    pcm16 = np.clip(np.round(mixed * 32768.0), -32768, 32767).astype(np.int16)
    return Track(pcm16, track.sample_rate, track.timeline)


def voiced_mask(track: Track) -> np.ndarray:
    """True where the truth says the user is voiced: utterances without their pauses."""
    assert track.timeline is not None, "a rendered script carries its timeline"
    mask = np.zeros(len(track.pcm16), bool)
    for span in track.timeline.speech:
        mask[span.start:span.end] = True
    for a, b in track.timeline.pauses:
        mask[a:b] = False
    return mask


def babble_clips(own_voice: str, sample_rate: int) -> list[np.ndarray]:
    """The babble sentences as spoken by every test voice but the scenario's own."""
    return [clip for voice, clip in _babble_bank(sample_rate) if voice != own_voice]


@functools.lru_cache(maxsize=2)
def _babble_bank(sample_rate: int) -> tuple[tuple[str, np.ndarray], ...]:
    """Each sentence by two test voices (half the list apart), synthesised once per process."""
    n, bank = len(VOICES), []
    for j, text in enumerate(BABBLE_SENTENCES):
        for voice in dict.fromkeys((VOICES[j % n], VOICES[(j + n // 2) % n])):
            bank.append((voice, synthesize(text, voice, BABBLE_RATE_WPM, sample_rate)))
    return tuple(bank)


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


def _slug(voice: str) -> str:
    """A voice name fit for a folder name ("festival:kal_diphone" -> "festival-kal_diphone")."""
    return re.sub(r"[^A-Za-z0-9+_.-]", "-", voice)
