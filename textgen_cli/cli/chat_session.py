"""`textgen generate --chat`: a multi-turn conversation over stdin, one message or command a line.

The session keeps the whole history and builds each prompt from all of it (a model that reads plain
text gets each message on its own); when the history outgrows the model's context, the oldest turns
are left out of the prompt (and the user is told), never out of the history that /save writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from textgen_cli.core.errors import UserError
from textgen_cli.data.readers import Messages
from textgen_cli.generation.decoding import GenerationStats
from textgen_cli.generation.generate import Generator
from textgen_cli.generation.prompts import PromptInput

CHAT_HELP = "commands: /reset (forget the conversation), /system TEXT (set the system prompt; empty clears it), /save FILE, /exit (or Ctrl-D)"


@dataclass
class ChatSession:
    """A multi-turn conversation: it keeps the history and builds each prompt from all of it."""

    generator: Generator
    out: TextIO
    err: TextIO
    system: str = ""
    history: Messages = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)
    told_dropped: int = 0

    def __post_init__(self) -> None:
        self.system = self.generator.system

    def say(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def messages(self) -> Messages:
        return [*([{"role": "system", "content": self.system}] if self.system else []), *self.history]

    def handle(self, line: str) -> bool:
        """Process one input line; False ends the session."""
        text = line.rstrip("\r\n")
        if not text.strip():
            return True
        if text.startswith("/") and not text.startswith("//"):
            return self.command(text)
        if text.startswith("//"):
            text = text[1:]
        self.reply(text)
        return True

    def command(self, text: str) -> bool:
        name, _, argument = text.partition(" ")
        argument = argument.strip()
        if name in ("/exit", "/quit"):
            return False
        if name == "/reset":
            self.history, self.told_dropped = [], 0
            self.say("(conversation cleared)")
        elif name == "/system":
            self.system = argument
            self.say(f"(system prompt set: {argument!r})" if argument else "(system prompt cleared)")
        elif name == "/save":
            if not argument:
                self.say("usage: /save FILE")
                return True
            try:
                Path(argument).expanduser().write_text(
                    json.dumps({"messages": self.messages()}, ensure_ascii=False) + "\n", encoding="utf-8"
                )
                self.say(f"(saved {len(self.messages())} turns to {argument})")
            except OSError as exc:
                self.say(f"error: cannot save to '{argument}': {exc.strerror or exc}")
        elif name == "/help":
            self.say(CHAT_HELP)
        else:
            self.say(f"unknown command '{name}'; {CHAT_HELP}")
        return True

    def reply(self, text: str) -> None:
        g = self.generator
        if g.fmt == "chat":
            item: PromptInput = [*self.history, {"role": "user", "content": text}]
        else:
            item = text  # the model reads plain text: each message stands alone
        try:
            prompt = g.prompt(item, system=self.system, where="message")
        except UserError as exc:
            self.say(f"error: {exc}")
            return
        if prompt.dropped_turns and prompt.dropped_turns != self.told_dropped:
            self.say(
                f"(the conversation is longer than the model's context: the {prompt.dropped_turns} oldest turns are left out)"
            )
            self.told_dropped = prompt.dropped_turns
        if prompt.truncated:
            self.say("(your message is longer than the model's context: only its beginning is used)")

        def write(chunk: str) -> None:
            self.out.write(chunk)
            self.out.flush()

        result = g.stream(prompt, write, self.stats, seed_offset=len(self.history) // 2)
        self.out.write("\n")
        self.out.flush()
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": result.output}]


def run_chat(generator: Generator, stdin: TextIO, out: TextIO, err: TextIO, interactive: bool) -> GenerationStats:
    """Read messages and commands line by line until /exit or end of input (Ctrl-D)."""
    session = ChatSession(generator, out, err)
    what = (
        "each prompt holds the conversation so far"
        if generator.fmt == "chat"
        else "no history: the model reads each message on its own (prompt format `text`)"
    )
    session.say(f"chat with {generator.path} ({generator.family}; {what})\n{CHAT_HELP}")
    while True:
        if interactive:
            try:
                line = input("> ")
            except EOFError:
                out.write("\n")
                break
        else:
            line = stdin.readline()
            if not line:
                break
        if not session.handle(line):
            break
    return session.stats
