"""The benchmark's mock agent, served unchanged by all three servers.

Entrypoints (see runagent.config.json):
  minimal         mock_response(message, role="user") -> str   (the default template's mock agent)
  minimal_stream  mock_response_stream(message, role="user")   -> the same reply, word by word
  count_stream    count_stream(n=10000)                        -> n short strings, a sync generator

The reply logic is the default template's MockLLM, inlined so that this file has no sibling
imports (bench/fastapi_app.py loads it by path). The template's per-call print() is left out:
the benchmark measures the server, not where each server sends an agent's stdout.
"""

from typing import Dict, Iterator, List

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


def _conversation(message, role) -> List[Dict[str, str]]:
    if isinstance(message, list) and all(isinstance(m, dict) for m in message):
        return message
    return [{"role": role, "content": str(message)}]


def _reply(messages: List[Dict[str, str]]) -> str:
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


def mock_response(message, role="user"):
    """Return the mock model's whole reply to the message."""
    return _reply(_conversation(message, role))


def mock_response_stream(message, role="user") -> Iterator[str]:
    """Yield the mock model's reply to the message word by word."""
    words = _reply(_conversation(message, role)).split(" ")
    for i, word in enumerate(words):
        yield word if i == len(words) - 1 else word + " "


def count_stream(n=10000) -> Iterator[str]:
    """Yield n short strings: "c0", "c1", ..."""
    for i in range(int(n)):
        yield "c%d" % i
