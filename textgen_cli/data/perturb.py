"""Seeded text perturbations, for adversarial augmentation and robustness evaluation.

Character-level noise (Belinkov & Bisk 2018; Pruthi et al. 2019) touches only words of 4 letters or
more and leaves their first and last letters alone; word-level noise drops, duplicates or locally
shuffles words. `rate` is the fraction of eligible words changed: exactly round(rate * eligible) of
them, chosen by a generator seeded from (seed, kind, rate, text), so the same call always gives the
same output whatever order texts are processed in.
"""

from __future__ import annotations

import random
import string

CHAR_KINDS = ("char_swap", "char_delete", "char_insert", "keyboard", "char_shuffle")
WORD_KINDS = ("word_drop", "word_dup", "word_shuffle")
# `char` picks one of the character operations at random for each chosen word.
KINDS = ("char", *CHAR_KINDS, *WORD_KINDS)

_KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
SHUFFLE_WINDOW = 3


def _keyboard_neighbours() -> dict[str, str]:
    neighbours: dict[str, str] = {}
    for r, row in enumerate(_KEYBOARD_ROWS):
        for c, letter in enumerate(row):
            near = []
            for dr in (-1, 0, 1):
                rr = r + dr
                if 0 <= rr < len(_KEYBOARD_ROWS):
                    for dc in (-1, 0, 1):
                        cc = c + dc
                        if (dr, dc) != (0, 0) and 0 <= cc < len(_KEYBOARD_ROWS[rr]):
                            near.append(_KEYBOARD_ROWS[rr][cc])
            neighbours[letter] = "".join(near)
    return neighbours


KEYBOARD = _keyboard_neighbours()


def _rng(text: str, kind: str, rate: float, seed: int) -> random.Random:
    return random.Random(f"{seed}|{kind}|{rate}|{text}")


def _eligible_char_word(word: str) -> bool:
    return sum(ch.isalpha() for ch in word) >= 4 and word[0].isalpha() and word[-1].isalpha()


def perturb_word(word: str, kind: str, rng: random.Random) -> str:
    """One character-level edit inside `word`, never touching its first or last letter."""
    inner = list(word[1:-1])
    if kind == "char_swap" and len(inner) >= 2:
        i = rng.randrange(len(inner) - 1)
        inner[i], inner[i + 1] = inner[i + 1], inner[i]
    elif kind == "char_delete" and inner:
        del inner[rng.randrange(len(inner))]
    elif kind == "char_insert":
        inner.insert(rng.randrange(len(inner) + 1), rng.choice(string.ascii_lowercase))
    elif kind == "keyboard" and inner:
        i = rng.randrange(len(inner))
        near = KEYBOARD.get(inner[i].lower())
        if near:
            replacement = rng.choice(near)
            inner[i] = replacement.upper() if inner[i].isupper() else replacement
    elif kind == "char_shuffle" and len(inner) >= 2:
        original = list(inner)
        for _ in range(5):  # a shuffle that changes nothing is not noise
            rng.shuffle(inner)
            if inner != original:
                break
        if inner == original:  # e.g. the 2 inner letters of a 4-letter word: rotate them instead
            inner = inner[1:] + inner[:1]
    return word[0] + "".join(inner) + word[-1]


def perturb(text: str, kind: str, rate: float, seed: int = 0) -> str:
    """Apply `kind` noise to about `rate` of the eligible words of `text` (exactly the rounded count)."""
    if kind not in KINDS:
        raise ValueError(f"unknown perturbation '{kind}'; expected one of {', '.join(KINDS)}")
    if not 0 <= rate <= 1:
        raise ValueError(f"perturbation rate must be in [0, 1], got {rate}")
    words = text.split()
    rng = _rng(text, kind, rate, seed)
    if kind in WORD_KINDS:
        eligible = list(range(len(words)))
    else:
        eligible = [i for i, w in enumerate(words) if _eligible_char_word(w)]
    count = int(round(rate * len(eligible)))
    if count == 0:
        return text
    chosen = sorted(rng.sample(eligible, count))
    if kind == "word_drop":
        if count >= len(words):  # never return an empty source
            chosen = chosen[:-1]
        drop = set(chosen)
        return " ".join(w for i, w in enumerate(words) if i not in drop)
    if kind == "word_dup":
        dup = set(chosen)
        return " ".join(part for i, w in enumerate(words) for part in ([w, w] if i in dup else [w]))
    if kind == "word_shuffle":
        # swap each chosen word with a neighbour within the window; a word moves at most once,
        # so no word travels further than the window
        out, moved = list(words), set()
        for i in chosen:
            if i in moved:
                continue
            near = [
                j
                for j in range(max(0, i - SHUFFLE_WINDOW + 1), min(len(out), i + SHUFFLE_WINDOW))
                if j != i and j not in moved
            ]
            if near:
                j = rng.choice(near)
                out[i], out[j] = out[j], out[i]
                moved.update((i, j))
        return " ".join(out)
    out = list(words)
    for i in chosen:
        op = rng.choice(CHAR_KINDS) if kind == "char" else kind
        out[i] = perturb_word(out[i], op, rng)
    return " ".join(out)


def parse_spec(spec: str) -> tuple[str, float]:
    """'char:0.1' -> ('char', 0.1), for --perturb and eval.perturb."""
    kind, _, rate = spec.partition(":")
    if kind not in KINDS:
        raise ValueError(
            f"unknown perturbation '{kind}' in '{spec}'; expected KIND:RATE with KIND one of {', '.join(KINDS)}"
        )
    try:
        value = float(rate)
    except ValueError:
        raise ValueError(f"perturbation '{spec}': expected KIND:RATE with a rate such as 0.1") from None
    if not 0 < value <= 1:
        raise ValueError(f"perturbation '{spec}': the rate must be in (0, 1]")
    return kind, value


def perturb_turns(messages: list[dict[str, str]], kind: str, rate: float, seed: int) -> list[dict[str, str]]:
    """Noise on every non-assistant turn of a conversation (the source side); assistant turns, the
    targets, stay as they are."""
    return [
        turn if turn["role"] == "assistant" else {**turn, "content": perturb(turn["content"], kind, rate, seed)}
        for turn in messages
    ]
