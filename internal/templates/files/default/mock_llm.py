"""A stand-in for a chat model client.

It answers from a few canned replies chosen by keywords in the last message, so
the agent runs anywhere: no network, no API key, and the same question always
gets the same answer.
"""

import time
from dataclasses import dataclass
from typing import Dict, Iterator, List

Message = Dict[str, str]


@dataclass
class Completion:
    content: str
    model: str
    usage_tokens: int
    response_time: float


_REPLIES = [
    (
        ("email", "mail", "letter"),
        "Subject: {topic}\n\nHello,\n\nThank you for your message about {topic}. "
        "I would be glad to discuss it further at a time that suits you.\n\nBest regards,\nThe Mock Assistant",
    ),
    (
        ("code", "function", "python", "program"),
        "Here is a small Python function for {topic}:\n\n"
        "def solve(items):\n    return sorted(items)\n\n"
        "It runs in O(n log n) time.",
    ),
    (
        ("analyze", "analyse", "analysis", "benefits", "compare"),
        "Analysis of {topic}: there are three main points. First, it saves time. "
        "Second, it needs clear communication. Third, its results should be measured.",
    ),
]


class MockLLM:
    """A deterministic fake of a chat completion client."""

    def __init__(self, model: str = "mock-gpt-4"):
        self.model = model

    def reply(self, messages: List[Message]) -> str:
        """The reply text for a conversation: canned by keyword, else an echo."""
        last = str(messages[-1].get("content", "")) if messages else ""
        role = messages[-1].get("role", "user") if messages else "user"
        topic = " ".join(last.split()) or "nothing in particular"
        lowered = topic.lower()
        for keywords, template in _REPLIES:
            if any(k in lowered for k in keywords):
                return template.format(topic=topic)
        return (
            f"Hello! You ({role}) said: \"{topic}\". "
            "I am a mock model, so this is a canned reply, but it arrived "
            "exactly like a real one would."
        )

    def complete(self, messages: List[Message]) -> Completion:
        """Answer the conversation in one piece."""
        started = time.perf_counter()
        text = self.reply(messages)
        return Completion(
            content=text,
            model=self.model,
            usage_tokens=len(text.split()),
            response_time=time.perf_counter() - started,
        )

    def stream(self, messages: List[Message]) -> Iterator[str]:
        """Answer word by word; the pieces join back into reply(messages)."""
        words = self.reply(messages).split(" ")
        for i, word in enumerate(words):
            yield word if i == len(words) - 1 else word + " "
